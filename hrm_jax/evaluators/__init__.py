"""Evaluator plug-ins: hrm_jax.evaluators.<type>.Evaluator, chosen by config."""
