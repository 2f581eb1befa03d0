"""The context-parallel path is the same function as one device: in fp64 (x64 enabled, params
and compute dtype float64) the whole `tiny` model's loss and every gradient on the packed batch
of test_context_parallel equal one device's to 1e-10 at sequence = 2, 4, 8. In fp32 the two
differ up to the model's fp32 floor (8e-5 for these weights; see test_context_parallel); here
rounding is 1e-16, so anything above 1e-10 would be a different function, not rounding
(measured on earlier weights: 1e-14 at most)."""

import jax
import numpy as np
import pytest

from a1jax.sharding import MeshSpec
from tests.conftest import random_params
from tests.train.helpers import grads64
from tests.train.test_context_parallel import TINY, _packed_batch

@pytest.fixture(scope="module")
def reference():
    params, batch = random_params(TINY, seed=3), _packed_batch()
    spec = MeshSpec.create(axes={"data": 1}, num_devices=1)
    loss, flat = grads64(TINY, spec, params, batch, jax.devices()[:1])
    return params, batch, loss, flat


@pytest.mark.parametrize("size", [pytest.param(2, marks=pytest.mark.slow),
                                  pytest.param(4, marks=pytest.mark.slow), 8])
def test_sequence_parallel_fp64_equals_one_device(size, reference, devices):
    params, batch, ref_loss, ref_flat = reference
    spec = MeshSpec.create(axes={"sequence": size}, num_devices=size)
    loss, flat = grads64(TINY, spec, params, batch, jax.devices()[:size])
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    assert [path for path, _ in flat] == [path for path, _ in ref_flat]
    diff = np.sqrt(sum(np.sum((g - r) ** 2) for (_, g), (_, r) in zip(flat, ref_flat)))
    norm = np.sqrt(sum(np.sum(r ** 2) for _, r in ref_flat))
    assert diff / norm < 1e-10, diff / norm
    for (path, got), (_, ref) in zip(flat, ref_flat):
        rel = np.linalg.norm(got - ref) / (np.linalg.norm(ref) + 1e-300)
        assert rel < 1e-10, (jax.tree_util.keystr(path), rel)
