"""Hugging Face <-> a1jax weights."""
