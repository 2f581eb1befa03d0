"""How each model preset runs: mesh layout, MoE dispatch, compute dtype, and where it starts.

`tiny` runs on the 8 simulated CPU devices of any developer machine (the demo and tests);
`bench` is the CPU benchmark size; `agents_a1_35b` is Qwen3.5-35B-A3B on one node of 8 GPUs with
141 GB (H200) each. Stage files look these up with `apply(config, model)`.
"""

from __future__ import annotations

import ml_collections

# The Qwen3.5-35B-A3B checkpoint stage 1 starts from: a local Hugging Face directory (fused or
# per-expert layout, text-only or the vision-language release).
QWEN35_35B_A3B = "checkpoints/Qwen3.5-35B-A3B"

MODELS = {
    "tiny": dict(
        # 4,096 rows: room for the shipped demo tokenizer (1,490 tokens; the preset's 512 is
        # for unit tests) and for a retrained one up to that size.
        vocab_size=4096, dtype="float32", moe_dispatch="expert_parallel", remat="none",
        scan_layers=False, layout="", axes="data=2,expert=2,sequence=2", init_from="",
    ),
    "bench": dict(
        vocab_size=4096, dtype="float32", moe_dispatch="dropless", remat="none",
        scan_layers=False, layout="fsdp", axes="", init_from="",
    ),
    "agents_a1_35b": dict(
        # bf16 compute (fp32 master weights and Adam state, sharded FSDP-style over all 8 GPUs),
        # every decoder layer rematerialised: at 131K tokens activations dominate memory. The
        # decoder scanned over its ten repeats of 3 DeltaNet + 1 attention layer: planned on
        # the CPU, stage 3's step compiles in 98 s instead of 394 s and needs 110 GiB of
        # temporaries per device instead of 742 (docs/planner.md).
        vocab_size=None, dtype="bfloat16", moe_dispatch="expert_parallel", remat="full",
        scan_layers=True, layout="expert_sequence", axes="", init_from=QWEN35_35B_A3B,
    ),
}


def apply(config: ml_collections.ConfigDict, model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    m = MODELS[model]
    config.model.preset = model
    config.model.vocab_size = m["vocab_size"]
    config.model.dtype = m["dtype"]
    config.model.moe_dispatch = m["moe_dispatch"]
    config.model.remat = m["remat"]
    config.model.scan_layers = m["scan_layers"]
    config.mesh.layout = m["layout"]
    config.mesh.axes = m["axes"]
    config.init_from = m["init_from"]
