"""Mixed-precision custom VJPs: what the backward pass keeps, and in which dtype.

Both follow what PyTorch's bf16 (autocast-style) training keeps and computes:
16-bit operands and residuals, float32 accumulation. In float32 their casts
are identities.
"""
# pylint: disable=invalid-name
import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def low_precision_matmul(x: Array, w: Array) -> Array:
  """x [..., in] (bf16/f16/f32) @ w [in, out] (float32 parameter) -> float32 [..., out].

  Forward: w is cast to x's dtype, products accumulated in float32. Backward as
  mixed precision does it (PyTorch autocast too): the incoming float32 cotangent is
  rounded to x's dtype, so both gradient matmuls take 16-bit operands (JAX's own
  rule would run them in float32, at half the speed, on float32 copies); dw is
  accumulated and returned in float32.
  """
  return jnp.matmul(x, w.astype(x.dtype), preferred_element_type=jnp.float32)


def _low_precision_matmul_fwd(x, w):
  return low_precision_matmul(x, w), (x, w)


def _low_precision_matmul_bwd(residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  dx = jnp.matmul(g, w.astype(x.dtype).T, preferred_element_type=jnp.float32)
  dw = jnp.einsum("...i,...o->io", x, g, preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dw


low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


def gated(gate: Array, up: Array, dtype) -> Array:
  """silu(gate) * up computed in float32, rounded to `dtype`."""
  return (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def gated_low_precision(gate_f32: Array, up_f32: Array, dtype) -> Array:
  """`gated` of the float32 accumulators, keeping gate and up for the backward
  pass in `dtype` (bf16: what PyTorch's bf16 SwiGLU keeps) instead of the
  float32 accumulators plus silu/sigmoid intermediates JAX's own rule keeps
  (5 float32 [.., F] tensors per SwiGLU and update: most of TRM's memory,
  BUILD_NOTES "Accelerator compilers on a CPU"). Forward values are unchanged."""
  return gated(gate_f32, up_f32, dtype)


def _gated_low_precision_fwd(gate_f32, up_f32, dtype):
  return gated(gate_f32, up_f32, dtype), (gate_f32.astype(dtype), up_f32.astype(dtype))


def _gated_low_precision_bwd(dtype, residuals, g):
  del dtype
  gate, up = (r.astype(jnp.float32) for r in residuals)
  g = g.astype(jnp.float32)
  sig = jax.nn.sigmoid(gate)
  d_up = g * gate * sig
  d_gate = g * up * sig * (1.0 + gate * (1.0 - sig))
  return d_gate, d_up


gated_low_precision.defvjp(_gated_low_precision_fwd, _gated_low_precision_bwd)


def _norm_scale(x32: Array, eps: float) -> Array:
  return jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def rms_norm_low_precision(x: Array, eps: float, dtype) -> Array:
  """Weightless RMSNorm of `x` (a float32 residual sum) over the last axis,
  computed in float32 and returned in `dtype`. The backward pass keeps x in
  `dtype` plus the float32 scale per row ([..., 1]) instead of the float32 x
  and normalised x JAX's own rule keeps: PyTorch keeps its bf16 sum and one
  float32 copy. Forward values are unchanged."""
  x32 = x.astype(jnp.float32)
  return (x32 * _norm_scale(x32, eps)).astype(dtype)


def _rms_norm_low_precision_fwd(x, eps, dtype):
  x32 = x.astype(jnp.float32)
  scale = _norm_scale(x32, eps)
  return (x32 * scale).astype(dtype), (x32.astype(dtype), scale)


def _rms_norm_low_precision_bwd(eps, dtype, residuals, g):
  del eps, dtype
  x, scale = residuals
  normed = x.astype(jnp.float32) * scale
  g = g.astype(jnp.float32)
  # y = x * r, r = (mean(x^2) + eps)^-1/2:  dx = r * (g - y * mean(g * y)).
  dx = scale * (g - normed * jnp.mean(g * normed, axis=-1, keepdims=True))
  return (dx,)


rms_norm_low_precision.defvjp(_rms_norm_low_precision_fwd, _rms_norm_low_precision_bwd)
