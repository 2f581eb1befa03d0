"""Experiment files: one per curriculum stage (curriculum/), layout ablations (layouts/), and
the per-model settings they share (models.py). Each file's `get_config(arg)` starts from
`a1jax.experiment.base()`, which declares every key."""
