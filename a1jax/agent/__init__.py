"""Agents acting in environments: the Environment interface and the synthetic domains as
environments (`environment.py`, `domains.py`).

Importing the package registers the built-in domains in `environment.ENVIRONMENTS`.
"""

from a1jax.agent import domains  # noqa: F401  (fills ENVIRONMENTS)
