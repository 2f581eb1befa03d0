"""Layouts that cannot work fail before compiling, naming the dimension and the axis."""

import dataclasses

import pytest

from a1jax.errors import A1Error
from a1jax.model import get_preset
from a1jax.sharding import MeshSpec
from a1jax.train.optim import OptimConfig
from a1jax.train.sharded import build_trainer

TINY = get_preset("tiny")


def _build(config=TINY, batch=8, seq=32, microbatches=1, **spec):
    return build_trainer(config, OptimConfig(), MeshSpec.create(**spec), batch=batch, seq=seq,
                         microbatches=microbatches)


@pytest.mark.parametrize("kwargs, message", [
    (dict(axes={"data": 3}), "mesh axes data=3 x expert=1 x sequence=1 multiply to 3, but there "
                             "are 8 devices"),
    (dict(axes={"data": 3, "expert": -1}), "mesh axes data=3 x expert=-1 x sequence=1 cannot "
                                           "fill 8 devices: 8 is not a multiple of 3"),
    (dict(axes={"data": -1, "expert": -1}), "only one mesh axis may be -1, got data, expert"),
    (dict(axes={"tensor": 8}), "unknown mesh axis 'tensor'; axes are data, expert, sequence"),
    (dict(layout="ring"), "unknown layout 'ring'; known: fsdp, expert, data_expert, "
                          "expert_sequence, sequence, data_expert_sequence"),
    (dict(axes={"data": 8}, rules=[("experts", "expert")]),
     "rules override names unknown logical axis 'experts'; known: act_batch, act_embed, "
     "act_seq, act_tokens, conv_window, embed, exp, head_dim, heads, kv_heads, layers, "
     "linear_conv, linear_heads, mlp, mlp_moe, router, vocab"),
    (dict(axes={"data": 8}, rules=[("exp", "model")]),
     "rules override maps 'exp' to unknown mesh axis 'model'"),
    (dict(axes={"data": 8}, batch=4), "batch 4 cannot be split into 1 microbatch(es) over mesh "
                                      "axes data=8 x expert=1 (8 shards): it must be a multiple "
                                      "of 8"),
    (dict(axes={"data": 8}, microbatches=2), "batch 8 cannot be split into 2 microbatch(es) "
                                             "over mesh axes data=8 x expert=1 (8 shards): it "
                                             "must be a multiple of 16"),
    (dict(axes={"sequence": 8}, seq=20), "sequence length 20 is not divisible by mesh axes "
                                         "sequence=8 (8 shards)"),
    (dict(axes={"expert": 8}, config=dataclasses.replace(TINY, num_experts=6,
                                                        moe_dispatch="expert_parallel")),
     "num_experts 6 is not divisible by mesh axis expert=8"),
    (dict(axes={"data": 8}, config=dataclasses.replace(TINY, hidden_size=60)),
     "parameter embed_tokens dimension 1 (embed=60) is not divisible by mesh axes data=8 x "
     "expert=1 x sequence=1 (8 shards)"),
])
def test_invalid_layouts(kwargs, message, devices):
    with pytest.raises(A1Error) as info:
        _build(**kwargs)
    assert str(info.value) == message
