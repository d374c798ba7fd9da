"""hrm_jax: the Hierarchical Reasoning Model in JAX/Flax."""

__version__ = "0.1.0"
