"""OPD on the model: the teacher's chunked top-k equals a dense one, the student's chunked SVA
gradients equal `sva_loss` on full logits, and the loss and gradients are the same on one
device, with 4 microbatches, and on data=2 x expert=2 x sequence=2 (the domain normalisation is
the batch's). A teacher equal to the student gives zero loss and gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax.model import Transformer, get_preset
from a1jax.rl import sva_loss
from a1jax.rl.distill import opd_grads, teacher_topk
from a1jax.sharding import MeshSpec
from a1jax.train.optim import OptimConfig
from a1jax.train.sharded import build_trainer
from tests.conftest import random_params
from tests.train.helpers import make_batch

# Chunks of 8 positions (of 32): the strided chunked paths, not the plain one.
CONFIG = get_preset("tiny").replace(loss_chunk_size=8, router_aux_loss_coef=0.0)
K = 8
DOMAINS = np.array([0, 0, 1, 2, 2, 2, 0, 3], np.int32)


@pytest.fixture(scope="module")
def setup():
    student, teacher = random_params(CONFIG, seed=0), random_params(CONFIG, seed=1)
    batch = make_batch(CONFIG.vocab_size, 8, 32, seed=4)
    del batch["targets"]
    batch["loss_mask"][3] = 0  # a sample with no student tokens
    ids, logprobs = jax.jit(functools.partial(teacher_topk, model_config=CONFIG, k=K))(
        teacher, batch)
    batch.update(teacher_ids=np.asarray(ids), teacher_logprobs=np.asarray(logprobs),
                 domains=DOMAINS)
    grads, metrics = jax.jit(functools.partial(opd_grads, model_config=CONFIG))(student, batch)
    return student, teacher, batch, grads, metrics


def _logits(params, batch):
    return Transformer(CONFIG).apply({"params": params}, batch["tokens"], batch["segment_ids"],
                                     batch["positions"]).logits_btx


def test_teacher_topk_equals_the_dense_top_k(setup):
    _, teacher, batch, _, _ = setup
    logprobs = jax.nn.log_softmax(_logits(teacher, batch), -1)
    values, ids = jax.lax.top_k(logprobs, K)
    np.testing.assert_array_equal(batch["teacher_ids"], np.asarray(ids))
    np.testing.assert_allclose(batch["teacher_logprobs"], np.asarray(values), atol=1e-5)


def test_chunked_gradients_equal_sva_loss_on_full_logits(setup):
    student, _, batch, grads, metrics = setup
    f = lambda p: sva_loss(_logits(p, batch), batch["teacher_ids"],  # noqa: E731
                           batch["teacher_logprobs"], batch["loss_mask"], batch["domains"])
    (loss, dense_metrics), dense_grads = jax.value_and_grad(f, has_aux=True)(student)
    np.testing.assert_allclose(float(metrics["sva_loss"]), float(loss), rtol=1e-5)
    for name in ("coverage", "reverse_kl", "teacher_mass", "student_entropy"):
        np.testing.assert_allclose(float(metrics[name]), float(dense_metrics[name]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(dense_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    assert float(loss) > 0.05  # two different random models (the check is not vacuous)


def _assert_same(got, want, rtol=1e-5, grad_tol=1e-5):
    """The loss to `rtol`; each gradient leaf to `grad_tol` of its largest entry."""
    grads, metrics = got
    np.testing.assert_allclose(float(metrics["sva_loss"]), float(want[1]["sva_loss"]), rtol=rtol)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want[0])):
        scale = np.abs(np.asarray(b)).max() + 1e-12
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=grad_tol,
                                   err_msg=jax.tree_util.keystr(path))


def test_the_same_on_a_mesh_and_in_microbatches(setup, devices):
    student, _, batch, grads, metrics = setup
    _assert_same(jax.jit(functools.partial(opd_grads, model_config=CONFIG, microbatches=4))(
        student, batch), (grads, metrics))
    config = CONFIG.replace(moe_dispatch="expert_parallel")
    spec = MeshSpec.create(axes={"data": 2, "expert": 2, "sequence": 2})
    trainer = build_trainer(config, OptimConfig(), spec, batch=8, seq=32)
    rows_time = NamedSharding(trainer.mesh, P(("data", "expert"), "sequence"))
    rows = NamedSharding(trainer.mesh, P(("data", "expert")))
    placed = {k: jax.device_put(v, rows if v.ndim == 1 else NamedSharding(
        trainer.mesh, P(("data", "expert"), "sequence", *[None] * (v.ndim - 2))))
        for k, v in batch.items()}
    assert placed["loss_mask"].sharding == rows_time
    params = jax.device_put(student, trainer.state_sharding.params)
    with trainer.context():
        sharded = jax.jit(functools.partial(opd_grads, model_config=config))(params, placed)
    # Gradients to 1e-4 of each leaf's largest entry on the mesh: float32 sums in another order
    # (the sequence split, expert dispatch); on one of our 2-core CPU machines a 4-entry leaf was
    # 4.2e-5 off. A per-shard domain normalisation changes sample weights by factors (the loss
    # is still checked to 1e-5).
    _assert_same(sharded, (grads, metrics), grad_tol=1e-4)


def test_teacher_topk_on_a_mesh_is_local(setup, devices):
    """On data 2 x expert 2 x sequence 2 the teacher's top-k equals one device's, and each
    device takes the top-k of its own rows and positions: the only all-gathers with the
    vocabulary in them are weights', never a chunk's logits (which XLA gathered to every device
    before `local_top_k`)."""
    import re

    _, teacher, batch, _, _ = setup
    spec = MeshSpec.create(axes={"data": 2, "expert": 2, "sequence": 2})
    config = CONFIG.replace(moe_dispatch="expert_parallel")
    trainer = build_trainer(config, OptimConfig(), spec, batch=8, seq=32)
    rows_time = NamedSharding(trainer.mesh, P(("data", "expert"), "sequence"))
    inputs = {k: jax.device_put(batch[k], rows_time) for k in ("tokens", "segment_ids",
                                                               "positions")}
    params = jax.device_put(teacher, trainer.state_sharding.params)
    topk = jax.jit(functools.partial(teacher_topk, model_config=config, k=K))
    with trainer.context():
        ids, logprobs = topk(params, inputs)
        hlo = topk.lower(params, inputs).compile().as_text()
    np.testing.assert_array_equal(np.asarray(ids), batch["teacher_ids"])
    np.testing.assert_allclose(np.asarray(logprobs), batch["teacher_logprobs"], atol=1e-5)
    v, d = CONFIG.vocab_size, CONFIG.hidden_size
    gathered = [re.match(r"\s*%\S+ = \w+\[([\d,]*)\]", line).group(1)
                for line in hlo.splitlines() if " all-gather(" in line]
    # (tiny's DeltaNet conv weight, [4, 512], shares the vocabulary's size)
    with_vocab = sorted({g for g in gathered if str(v) in g.split(",")})
    assert with_vocab == sorted({f"{d},{v}", f"{v},{d}", f"4,{v}"}), with_vocab


def test_a_teacher_equal_to_the_student_gives_zero_loss_and_gradient(setup):
    student, _, batch, _, _ = setup
    ids, logprobs = jax.jit(functools.partial(teacher_topk, model_config=CONFIG, k=K))(
        student, batch)
    same = dict(batch, teacher_ids=ids, teacher_logprobs=logprobs)
    grads, metrics = jax.jit(functools.partial(opd_grads, model_config=CONFIG))(student, same)
    assert abs(float(metrics["sva_loss"])) < 1e-6
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6
