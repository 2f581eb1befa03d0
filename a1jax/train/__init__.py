"""Training: optimizer, the pure train step and its sharded compilation."""
