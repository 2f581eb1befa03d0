"""The dropless layer costs what the routed tokens cost on the CPU backend (not all experts)."""

from a1jax.model.dispatch import dropless_compiled_flops


def test_dropless_flops_near_routed_flops():
    # The bench model's MoE on a 4 x 1024 batch: 32 experts, top-4, d 256, f 128.
    cost = dropless_compiled_flops(tokens=4096, top_k=4, experts=32, d=256, f=128)
    ratio = cost["flops"] / cost["routed_flops"]
    assert 1.0 <= ratio <= 1.3, cost
    # A dense dispatch would cost num_experts / top_k = 8x the routed FLOPs.
