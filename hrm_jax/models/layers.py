"""Building blocks of the HRM transformer modules (reference spec §1.2).

Every layer keeps float32 master weights and computes in the dtype of its input
(bfloat16 by default, float32 for parity tests). Matrix products take operands in
the compute dtype and accumulate in float32 (`preferred_element_type`), then round
back: the same numerics as PyTorch's bf16 matmuls, and the fastest form on CPUs
with AVX512_BF16.

Dimension letters: B batch, L tokens (puzzle-embedding prefix + grid), D hidden,
H heads, K head dim, F SwiGLU inner width, V vocabulary.

Blocks mix tokens with self-attention (HRM, TRM-Att) or, with `mlp_t=True`
(TRM-MLP), with a SwiGLU along the sequence axis whose weights are sized for a
fixed number of positions.
"""
# pylint: disable=invalid-name
import contextlib
import contextvars
import math
from typing import Callable

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from hrm_jax.models import precision

Array = jax.Array
Initializer = Callable[..., Array]

# std of a standard normal truncated to [-2, 2]: dividing by it makes the *actual*
# std of the truncated sample equal the requested one (what the reference's
# `trunc_normal_init_` and flax's `variance_scaling(..., "truncated_normal")` do).
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def truncated_normal(std: float) -> Initializer:
  """Normal truncated to ±2 (corrected) std, sampled in float32."""

  def init(key, shape, dtype=jnp.float32):
    sample = jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)
    return (sample * (std / _TRUNCATED_NORMAL_STD)).astype(dtype)

  return init


# Truncated LeCun normal: std 1/sqrt(fan_in) with the same correction.
lecun_truncated_normal = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal")


def cast_floats(tree, dtype):
  """Every floating leaf of `tree` in `dtype` (weights cast once, e.g. before a
  no-gradient loop, instead of in every update)."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _matmul(x: Array, w: Array, keep_float32: bool = False) -> Array:
  """x @ w with x's dtype as operands and float32 accumulation.

  The result is rounded back to x's dtype unless `keep_float32`: then the
  consumer (a norm, RoPE, SiLU: all computed in float32 anyway) takes the
  accumulator directly and XLA fuses the rounding into it, instead of a
  separate pass over the activation (as costly as the matmul itself on CPUs).
  """
  # Every dtype takes the custom VJP (`precision`): in float32 its casts are identities, and its
  # dW = einsum(x, g) saves the transposes of [B*L, F] activations that JAX's
  # own matmul transpose rule makes on XLA:CPU (BUILD_NOTES.md, issue 15).
  y = precision.low_precision_matmul(x, w)
  # The name lets remat="dots" keep projection outputs (an identity otherwise).
  y = checkpoint_name(y, PROJECTION)
  return y if keep_float32 else y.astype(x.dtype)


class CastedDense(nn.Module):
  """Linear layer: float32 kernel [in, out], computed in the input's dtype.

  `num_splits` > 1 returns that many outputs from equal column blocks of one
  fused kernel (qkv, gate/up): the parameter keeps the reference's fused layout
  while the compute slices the small kernel instead of the large activation, so
  the backward pass concatenates weight gradients instead of padding activations.
  """
  features: int
  use_bias: bool = False
  kernel_init: Initializer = lecun_truncated_normal
  bias_init: Initializer = nn.initializers.zeros
  num_splits: int = 1
  keep_float32: bool = False  # return the float32 accumulator (see _matmul)

  @nn.compact
  def __call__(self, x: Array):
    kernel = self.param("kernel", self.kernel_init,
                        (x.shape[-1], self.features), jnp.float32)
    if self.num_splits > 1:
      assert not self.use_bias
      return tuple(_matmul(x, k, self.keep_float32)
                   for k in jnp.split(kernel, self.num_splits, axis=1))
    y = _matmul(x, kernel, self.keep_float32)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(y.dtype)
    return y


class CastedEmbed(nn.Module):
  """Embedding table in float32, looked up after casting to the compute dtype."""
  num_embeddings: int
  features: int
  init_std: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, ids: Array) -> Array:
    table = self.param("embedding", truncated_normal(self.init_std),
                       (self.num_embeddings, self.features), jnp.float32)
    return jnp.take(table.astype(self.dtype), ids, axis=0)


def rms_norm(x: Array, eps: float) -> Array:
  """Weightless RMSNorm computed in float32, returned in the input dtype."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return x32.astype(x.dtype)


def residual_norm(x: Array, eps: float, dtype) -> Array:
  """rms_norm of the float32 residual sum `x`, in `dtype`; in 16-bit the backward
  pass keeps x in `dtype` (`precision.rms_norm_low_precision`), in float32 JAX's
  own rule runs (parity and golden tests unchanged)."""
  if jnp.dtype(dtype) == jnp.dtype(jnp.float32):
    return rms_norm(x, eps).astype(dtype)
  return precision.rms_norm_low_precision(x, eps, jnp.dtype(dtype))


def rope_cos_sin(num_positions: int, head_dim: int,
                 theta: float) -> tuple[np.ndarray, np.ndarray]:
  """float32 cos/sin tables [L, K] in the rotate-half (GPT-NeoX) layout.

  Computed with NumPy so that they enter the program as constants: as traced
  values XLA may fuse the cosine into every consumer and evaluate it per element.
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  freqs_LxK2 = np.outer(np.arange(num_positions, dtype=np.float32), inv_freq)
  emb_LxK = np.concatenate([freqs_LxK2, freqs_LxK2], axis=-1)
  return np.cos(emb_LxK).astype(np.float32), np.sin(emb_LxK).astype(np.float32)


def apply_rope(x_BxLxHxK: Array, cos_LxK, sin_LxK, dtype) -> Array:
  """Rotates q or k in float32 (rotate-half convention), returns `dtype`.

  rotate_half(x) = concat(-x2, x1) is written as a flip of the two halves times
  a sign, whose gradient is again a flip (slicing would back-propagate as pads).
  """
  x = x_BxLxHxK.astype(jnp.float32)
  *lead, K = x.shape
  halves = x.reshape(*lead, 2, K // 2)
  sign = np.array([[-1.0], [1.0]], np.float32)
  rotated = (jnp.flip(halves, axis=-2) * sign).reshape(x.shape)
  cos, sin = cos_LxK[:, None, :], sin_LxK[:, None, :]
  return (x * cos + rotated * sin).astype(dtype)


class Attention(nn.Module):
  """Non-causal multi-head self-attention with a fused QKV projection.

  No mask at all, as in the reference: padding and the puzzle prefix are attended.
  `impl`: "xla" (dense scores, any backend), "cudnn" (fused flash attention,
  GPU, 16-bit only) or "auto" (cudnn where it applies).

  Head width K = D // H as in the reference, so the attention width H * K is D
  whenever H divides D (HRM, TRM); otherwise (the reference's transformer
  baseline: D 512, 12 heads, K 42) q, k, v and the o_proj input are H * K wide.
  """
  num_heads: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxLxD: Array, cos_sin) -> Array:
    B, L, D = x_BxLxD.shape
    H = self.num_heads
    K = D // H
    # Kernel columns: Q heads, then K heads, then V heads, each head contiguous.
    dtype = x_BxLxD.dtype
    q_BxLxD, k_BxLxD, v_BxLxD = CastedDense(3 * H * K, num_splits=3, keep_float32=True,
                                            name="qkv_proj")(x_BxLxD)
    q_BxLxHxK = q_BxLxD.reshape(B, L, H, K)
    k_BxLxHxK = k_BxLxD.reshape(B, L, H, K)
    v_BxLxHxK = v_BxLxD.reshape(B, L, H, K).astype(dtype)
    if cos_sin is not None:
      q_BxLxHxK = apply_rope(q_BxLxHxK, *cos_sin, dtype)
      k_BxLxHxK = apply_rope(k_BxLxHxK, *cos_sin, dtype)
    else:
      q_BxLxHxK, k_BxLxHxK = q_BxLxHxK.astype(dtype), k_BxLxHxK.astype(dtype)
    if resolve_attention_impl(self.impl, dtype) == "cudnn":
      # Fused flash attention: no B x H x L x L scores in memory (30x30 grids).
      out_BxLxHxK = cudnn_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
    else:
      out_BxLxHxK = dense_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
    out_BxLxD = out_BxLxHxK.astype(dtype).reshape(B, L, H * K)
    return CastedDense(D, keep_float32=True, name="o_proj")(out_BxLxD)


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


# The platform attention resolves for while tracing (`attention_platform`); None:
# the backend the program runs on.
_ATTENTION_PLATFORM = contextvars.ContextVar("attention_platform", default=None)


@contextlib.contextmanager
def attention_platform(platform: str | None):
  """Inside the block, "auto" attention resolves for `platform` ("gpu", "tpu",
  "cpu") instead of `jax.default_backend()`: the AOT compile check traces on a
  CPU a program that XLA's GPU or TPU compiler compiles."""
  token = _ATTENTION_PLATFORM.set(platform)
  try:
    yield
  finally:
    _ATTENTION_PLATFORM.reset(token)


def resolve_attention_impl(impl: str, dtype, platform: str | None = None) -> str:
  """"auto" -> cuDNN flash attention on GPUs for 16-bit activations, else "xla".

  `platform`: the platform the program is compiled for; default the one set by
  `attention_platform`, else `jax.default_backend()`.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r}: use one of {ATTENTION_IMPLS}.")
  platform = platform or _ATTENTION_PLATFORM.get() or jax.default_backend()
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  on_gpu = platform in ("gpu", "cuda")
  if impl == "cudnn" and not (half and on_gpu):
    raise ValueError(
        f"attention_impl='cudnn' needs a GPU and bfloat16/float16 activations (platform "
        f"{platform!r}, forward_dtype {jnp.dtype(dtype).name}); use "
        "attention_impl='auto' (picks cuDNN where it applies) or 'xla'.")
  if impl != "auto":
    return impl
  return "cudnn" if half and on_gpu else "xla"


def cudnn_attention(q_BxLxHxK: Array, k_BxLxHxK: Array, v_BxLxHxK: Array) -> Array:
  """cuDNN flash attention (scores scaled by 1/sqrt(K)); L is padded to a multiple
  of 64 (cuDNN's tile) with the padded keys masked out by `key_value_seq_lengths`."""
  B, L = q_BxLxHxK.shape[:2]
  pad = (-L) % 64
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (jnp.pad(t, widths)
                                       for t in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
  out = jax.nn.dot_product_attention(
      q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, implementation="cudnn",
      key_value_seq_lengths=jnp.full((B,), L, jnp.int32) if pad else None)
  return out[:, :L]


def dense_attention(q_BxLxHxK: Array, k_BxLxHxK: Array, v_BxLxHxK: Array) -> Array:
  """softmax(q k^T / sqrt(K)) v with float32 scores; returns float32 BxLxHxK."""
  K = q_BxLxHxK.shape[-1]
  scores_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK,
                              preferred_element_type=jnp.float32)
  probs_BxHxLxL = jax.nn.softmax(scores_BxHxLxL * (1.0 / math.sqrt(K)), axis=-1)
  return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxLxL.astype(v_BxLxHxK.dtype),
                    v_BxLxHxK, preferred_element_type=jnp.float32)


def swiglu_width(hidden_size: int, expansion: float) -> int:
  """Inner width: round(expansion * D * 2/3) rounded up to a multiple of 256."""
  width = round(expansion * hidden_size * 2 / 3)
  return -(width // -256) * 256


class SwiGLU(nn.Module):
  """down(silu(gate) * up) with gate and up fused in one projection (gate first).

  In 16-bit the backward pass keeps gate and up in that dtype
  (`precision.gated_low_precision`); in float32 JAX's own rule runs (parity, golden).
  """
  expansion: float

  @nn.compact
  def __call__(self, x_BxLxD: Array) -> Array:
    D = x_BxLxD.shape[-1]
    F = swiglu_width(D, self.expansion)
    gate_BxLxF, up_BxLxF = CastedDense(2 * F, num_splits=2, keep_float32=True,
                                       name="gate_up_proj")(x_BxLxD)
    dtype = jnp.dtype(x_BxLxD.dtype)
    if dtype == jnp.dtype(jnp.float32):
      hidden_BxLxF = precision.gated(gate_BxLxF, up_BxLxF, dtype)
    else:
      hidden_BxLxF = precision.gated_low_precision(gate_BxLxF, up_BxLxF, dtype)
    return CastedDense(D, keep_float32=True, name="down_proj")(hidden_BxLxF)


class PostNormBlock(nn.Module):
  """h = norm(h + mix(h)); h = norm(h + mlp(h)).

  The token mixer `mix` is self-attention, or with `mlp_t` (TRM-MLP) a SwiGLU
  along the sequence axis: h is transposed to [B, D, L], the SwiGLU maps the L
  positions of each channel (inner width `swiglu_width(L, expansion)`), and the
  residual's RMSNorm runs on the transposed tensor, i.e. over the *sequence*
  axis, as in the reference; then back to [B, L, D] for the channel SwiGLU.
  Its weights are position-specific, so the block only runs at the
  `num_positions` it was built for.

  The sublayers return float32 accumulators, so each residual add happens in
  float32 inside the norm's fusion (PyTorch adds in bf16 first: a rounding
  difference well inside the bf16 parity tolerance).
  """
  num_heads: int
  expansion: float
  rms_norm_eps: float
  attention_impl: str = "auto"
  mlp_t: bool = False  # token-mixing SwiGLU instead of self-attention
  num_positions: int = 0  # L the token-mixing weights are sized for (mlp_t only)

  @nn.compact
  def __call__(self, h_BxLxD: Array, cos_sin) -> Array:
    dtype = h_BxLxD.dtype
    if self.mlp_t:
      L = h_BxLxD.shape[1]
      if L != self.num_positions:
        raise ValueError(
            f"mlp_t: this block was built for {self.num_positions} positions but got a "
            f"sequence of {L}: the token-mixing SwiGLU's weights are sized for "
            f"{self.num_positions} positions (seq_len + puzzle_emb_len), so the model "
            "only runs at the sequence length it was built for; rebuild it with that "
            "seq_len (or use attention, mlp_t=False).")
      h_BxDxL = jnp.swapaxes(h_BxLxD, 1, 2)
      mix = SwiGLU(self.expansion, name="mlp_t")(h_BxDxL)
      h_BxDxL = residual_norm(h_BxDxL + mix, self.rms_norm_eps, dtype)  # over L
      h_BxLxD = jnp.swapaxes(h_BxDxL, 1, 2)
    else:
      attn = Attention(self.num_heads, self.attention_impl, name="self_attn")(h_BxLxD, cos_sin)
      h_BxLxD = residual_norm(h_BxLxD + attn, self.rms_norm_eps, dtype)
    mlp = SwiGLU(self.expansion, name="mlp")(h_BxLxD)
    return residual_norm(h_BxLxD + mlp, self.rms_norm_eps, dtype)


# Rematerialisation of the blocks under differentiation (`remat`):
#   "none"   keep every intermediate the backward pass needs (fastest);
#   "blocks" keep only each block's input, recompute the block in the backward
#            pass (least memory: one block's intermediates alive at a time);
#   "dots"   keep the outputs of the projection matmuls (every `_matmul`, named
#            PROJECTION), recompute the rest: attention scores and
#            probabilities (the B x H x L x L tensors: the bulk of the memory at
#            30x30 grids with dense attention), norms, RoPE, SiLU. Cheaper to
#            recompute than "blocks" (no projection matmul is redone) for most
#            of its saving. It is JAX's `dots_with_no_batch_dims_saveable` made
#            to see our bf16 matmuls: they are a custom_vjp, whose dot_general
#            that policy cannot see (with it, "dots" was "blocks" in bf16).
# Without differentiation (the no-grad updates, evaluation) a checkpoint is
# inlined as is: the forward computation is unchanged.
PROJECTION = "projection"
REMAT_POLICIES = {
    "none": None,
    "blocks": None,
    "dots": jax.checkpoint_policies.save_only_these_names(PROJECTION),
}


def check_switches(config) -> None:
  """Raises ValueError naming the choices unless `config.attention_impl` and
  `config.remat` (every family's implementation switches) are known ones."""
  if config.attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={config.attention_impl!r}: use one of "
                     f"{ATTENTION_IMPLS}.")
  if config.remat not in REMAT_POLICIES:
    raise ValueError(f"remat={config.remat!r}: use one of {sorted(REMAT_POLICIES)} "
                     "(config.model.remat).")


def remat_block(block_cls: type[nn.Module], remat: str) -> type[nn.Module]:
  """`block_cls` wrapped by the `remat` policy (see REMAT_POLICIES); same parameters."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: use one of {sorted(REMAT_POLICIES)} "
                     "(config.model.remat).")
  if remat == "none":
    return block_cls
  return nn.remat(block_cls, policy=REMAT_POLICIES[remat])


class ReasoningModule(nn.Module):
  """One update: add the input injection, then run the block stack.

  HRM has two (H and L), TRM one shared by both of its updates, the transformer
  baseline one. `mlp_t`/`num_positions` are passed to every block.
  """
  num_layers: int
  num_heads: int
  expansion: float
  rms_norm_eps: float
  attention_impl: str = "auto"
  mlp_t: bool = False
  num_positions: int = 0
  remat: str = "none"  # REMAT_POLICIES

  @nn.compact
  def __call__(self, z_BxLxD: Array, injection_BxLxD: Array, cos_sin) -> Array:
    h_BxLxD = z_BxLxD + injection_BxLxD
    block = remat_block(PostNormBlock, self.remat)
    for i in range(self.num_layers):
      h_BxLxD = block(self.num_heads, self.expansion, self.rms_norm_eps,
                      self.attention_impl, mlp_t=self.mlp_t,
                      num_positions=self.num_positions,
                      name=f"layers_{i}")(h_BxLxD, cos_sin)
    return h_BxLxD
