"""Decoding: the sampler's transforms (`sampling`) and the batched engine over a live cache
(`engine`). The cache itself belongs to the model (`a1jax.model.cache`)."""
