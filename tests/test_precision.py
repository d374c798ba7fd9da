"""What the SwiGLU keeps for the backward pass (`hrm_jax.models.precision`).

In bf16 the gate and up activations are kept in bf16 (as PyTorch's bf16 SwiGLU
keeps them), not as float32 accumulators plus float32 silu/sigmoid copies:
the largest buffers of TRM's step on the GPU compiler (BUILD_NOTES.md,
"Accelerator compilers on a CPU"). Gradients stay those of the formula.
"""
import jax
from jax.ad_checkpoint import print_saved_residuals
import jax.numpy as jnp
import numpy as np

from hrm_jax.models import layers, precision

F = 512  # the inner width: no other tensor of the test has it


def _swiglu(dtype):
  x = jax.random.normal(jax.random.key(0), (2, 24, 64)).astype(dtype)
  module = layers.SwiGLU(expansion=4.0)  # inner width swiglu_width(64, 4) = 256
  params = module.init(jax.random.key(1), x)
  return module, params, x


def _residuals(dtype, capsys):
  module, params, x = _swiglu(dtype)
  loss = lambda p, x: jnp.sum(module.apply(p, x).astype(jnp.float32) ** 2)
  capsys.readouterr()
  print_saved_residuals(loss, params, x)
  return capsys.readouterr().out.splitlines()


def test_bf16_swiglu_keeps_gate_and_up_in_bf16(capsys):
  width = layers.swiglu_width(64, 4.0)
  lines = _residuals(jnp.bfloat16, capsys)
  wide = [line for line in lines if f"[2,24,{width}]" in line]
  assert wide and all("bf16" in line for line in wide), "\n".join(lines)
  # float32 keeps JAX's own rule (parity and golden tests bit for bit): f32 residuals.
  wide32 = [line for line in _residuals(jnp.float32, capsys) if f"[2,24,{width}]" in line]
  assert any("f32" in line for line in wide32)


def test_gated_low_precision_gradient_is_the_formulas():
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  gate = jax.random.normal(k1, (8, F)) * 3
  up = jax.random.normal(k2, (8, F))
  ct = jax.random.normal(k3, (8, F)).astype(jnp.bfloat16)
  reference = lambda g, u: precision.gated(g, u, jnp.bfloat16)
  ours = lambda g, u: precision.gated_low_precision(g, u, jnp.bfloat16)
  out_ref, vjp_ref = jax.vjp(reference, gate, up)
  out, vjp = jax.vjp(ours, gate, up)
  np.testing.assert_array_equal(out, out_ref)  # the forward pass is unchanged
  for got, want in zip(vjp(ct), vjp_ref(ct)):
    assert got.dtype == jnp.float32
    # Residuals rounded to bf16 (8 bits of mantissa): relative error ~2^-8.
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2 * float(jnp.std(want)))
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-2
