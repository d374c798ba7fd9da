"""The HRM inner model and one deep-supervision segment (reference spec §1.3).

Two recurrent transformer modules share one token space: L (fast, `L_cycles`
updates per cycle, input injection z_H + x) and H (slow, one update per cycle,
input injection z_L). A *segment* runs H_cycles * L_cycles L-updates and H_cycles
H-updates; only the very last L and H update carry gradient (the one-step
gradient), so memory does not grow with depth.

Dimension letters: B batch, S grid tokens, P puzzle-embedding prefix tokens,
L = P + S tokens, D hidden, E puzzle-embedding width, V vocabulary.
"""
# pylint: disable=invalid-name
import dataclasses
import functools
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from hrm_jax import models
from hrm_jax.models import io, layers

Array = jax.Array
Variables = Any  # {"params": ..., "buffers": ...}


@dataclasses.dataclass(frozen=True)
class HRMConfig(io.PrefixShape):
  """Model hyperparameters; field names follow the reference's `hrm_v1.yaml`.

  The one source of the family's defaults (reference values, spec §1.1):
  experiment files get `config.model` from `models.default_fields("hrm")`.
  """
  ARCH: ClassVar[str] = "hrm"
  # Data-derived (from the dataset, never set in config.model).
  seq_len: int
  vocab_size: int
  num_puzzle_identifiers: int
  # Width of the learned per-puzzle embedding (ceil(ndim / hidden) prefix tokens).
  puzzle_emb_ndim: int = 512
  H_cycles: int = 2  # N: high-level updates per segment.
  L_cycles: int = 2  # T: low-level updates per high-level update.
  H_layers: int = 4  # Transformer blocks of the H module.
  L_layers: int = 4  # Transformer blocks of the L module.
  hidden_size: int = 512
  expansion: float = 4.0  # SwiGLU width = round(expansion * hidden * 2/3) up to 256s.
  num_heads: int = 8
  pos_encodings: Literal["rope", "learned"] = "rope"
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  halt_max_steps: int = 16  # M_max: ACT segments at most (always run at eval).
  halt_exploration_prob: float = 0.1  # epsilon: force a random minimum of segments.
  forward_dtype: str = "bfloat16"  # Activations; weights stay float32.
  loss_type: Literal["stablemax_cross_entropy",
                     "softmax_cross_entropy"] = "stablemax_cross_entropy"
  # Implementation switches (not in the reference).
  scan: bool = True  # lax.scan the no-gradient updates (False: Python loop).
  one_step_gradient: bool = True  # False: backprop through every update (BPTT).
  # "auto": cuDNN flash attention on GPUs in bf16 (no L x L scores in memory), else
  # dense XLA attention; "xla" or "cudnn" force one.
  attention_impl: str = "auto"
  # Rematerialisation of the differentiated updates' blocks: "none", "blocks"
  # or "dots" (layers.REMAT_POLICIES): less activation memory for some recompute.
  remat: str = "none"

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}.")
    if self.pos_encodings not in ("rope", "learned"):
      raise ValueError(f"pos_encodings={self.pos_encodings!r}: use 'rope' or 'learned'.")
    if self.H_cycles < 1 or self.L_cycles < 1:
      raise ValueError("H_cycles and L_cycles must be >= 1.")
    if self.halt_max_steps < 1:
      raise ValueError("halt_max_steps must be >= 1.")
    layers.check_switches(self)

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.forward_dtype)

  @property
  def act_rules(self) -> models.ACTRules:
    """q_halt > q_continue, and the bootstrapped Q-continue target (spec §2)."""
    return models.ACTRules(halt_on_q_halt_alone=False, q_continue_target=True)



class HRMInner(io.TwoStateModel):
  """Parameters and the single-step pieces of HRM; `segment` composes them.

  The puzzle-embedding table is not part of this module: it is trained by its
  own sparse optimiser, so callers gather its rows and pass them in. The input
  embedding and the heads are `io.PuzzleModel`'s.
  """
  config: HRMConfig

  def setup(self):
    cfg = self.config
    self.setup_io(head_dim=cfg.hidden_size // cfg.num_heads)
    module = functools.partial(layers.ReasoningModule, num_heads=cfg.num_heads,
                               expansion=cfg.expansion,
                               rms_norm_eps=cfg.rms_norm_eps,
                               attention_impl=cfg.attention_impl,
                               remat=cfg.remat)
    self.H_level = module(num_layers=cfg.H_layers)
    self.L_level = module(num_layers=cfg.L_layers)
    self.setup_initial_states(("H_init", "L_init"))

  def H_update(self, z_H_BxLxD: Array, z_L_BxLxD: Array) -> Array:
    return self.H_level(z_H_BxLxD, z_L_BxLxD, self.cos_sin)


init_variables = io.init_variables


def segment(model: HRMInner, variables: Variables, z_H_BxLxD: Array,
            z_L_BxLxD: Array, inputs_BxS: Array, puzzle_rows_BxE: Array, *,
            trace: bool = False):
  """One deep-supervision segment (reference `Inner.forward`).

  Update order for N = H_cycles, T = L_cycles: T L-updates then one H-update, N
  times. All but the final L and final H update run without gradient.

  Args:
    model, variables: the inner model and its {"params", "buffers"}.
    z_H_BxLxD, z_L_BxLxD: the carried states.
    inputs_BxS, puzzle_rows_BxE: the example and its puzzle-embedding rows.
    trace: (static) also return every intermediate state, for `analyze`. Off,
      the function and its compiled program are exactly those without it.

  Returns:
    ((z_H, z_L) new carry without gradient, logits [B,S,V], q_halt [B], q_continue [B])
    and, with `trace`, a fifth item {"z_L": [N*T,B,L,D] the state after each
    L-update, "z_H": [N,B,L,D] after each H-update}, in update order, without
    gradient (the last entries are the new carry).
  """
  cfg = model.config
  L_update = functools.partial(model.apply, method=HRMInner.L_update)
  H_update = functools.partial(model.apply, method=HRMInner.H_update)
  x_BxLxD = model.apply(variables, inputs_BxS, puzzle_rows_BxE,
                        method=HRMInner.embed_input)

  if cfg.one_step_gradient:
    # The gradient boundary: nothing before the final L and H update is differentiated.
    frozen = jax.lax.stop_gradient((variables, x_BxLxD, z_H_BxLxD, z_L_BxLxD))
    no_grad_vars, no_grad_x, z_H_BxLxD, z_L_BxLxD = frozen
    # Weights are cast once, outside the loop, instead of in every update.
    no_grad_vars = layers.cast_floats(no_grad_vars, cfg.dtype)
  else:
    no_grad_vars, no_grad_x = variables, x_BxLxD

  def L_step(z_H, z_L):
    return L_update(no_grad_vars, z_L, z_H, no_grad_x)

  def H_step(z_H, z_L):
    return H_update(no_grad_vars, z_H, z_L)

  # With `trace`, the states after each update in order (lists of [k,B,L,D]);
  # without it the loops emit nothing extra (scan outputs None, as before).
  trace_L, trace_H = [], []
  N, T = cfg.H_cycles, cfg.L_cycles
  if cfg.scan:
    def l_body(z_L, _, z_H):
      z_L = L_step(z_H, z_L)
      return z_L, (z_L if trace else None)

    def cycle_body(z_HL, _):
      z_H, z_L = z_HL
      z_L, zs_L = jax.lax.scan(functools.partial(l_body, z_H=z_H), z_L, length=T)
      z_H = H_step(z_H, z_L)
      return (z_H, z_L), ((zs_L, z_H) if trace else None)

    if N > 1:
      (z_H_BxLxD, z_L_BxLxD), ys = jax.lax.scan(
          cycle_body, (z_H_BxLxD, z_L_BxLxD), length=N - 1)
      if trace:
        zs_L, zs_H = ys  # [N-1, T, B, L, D], [N-1, B, L, D]
        trace_L.append(zs_L.reshape((-1,) + zs_L.shape[2:]))
        trace_H.append(zs_H)
    if T > 1:
      z_L_BxLxD, zs_L = jax.lax.scan(functools.partial(l_body, z_H=z_H_BxLxD),
                                     z_L_BxLxD, length=T - 1)
      if trace:
        trace_L.append(zs_L)
  else:
    for h in range(N):
      for l in range(T):
        if not (h == N - 1 and l == T - 1):
          z_L_BxLxD = L_step(z_H_BxLxD, z_L_BxLxD)
          if trace:
            trace_L.append(z_L_BxLxD[None])
      if h != N - 1:
        z_H_BxLxD = H_step(z_H_BxLxD, z_L_BxLxD)
        if trace:
          trace_H.append(z_H_BxLxD[None])

  # The one-step-gradient updates, with the trainable weights.
  z_L_BxLxD = L_update(variables, z_L_BxLxD, z_H_BxLxD, x_BxLxD)
  z_H_BxLxD = H_update(variables, z_H_BxLxD, z_L_BxLxD)
  logits_BxSxV, q_halt_B, q_continue_B = model.apply(
      variables, z_H_BxLxD, method=HRMInner.heads)
  new_carry = jax.lax.stop_gradient((z_H_BxLxD, z_L_BxLxD))
  if not trace:
    return new_carry, logits_BxSxV, q_halt_B, q_continue_B
  states = {"z_L": trace_L + [z_L_BxLxD[None]], "z_H": trace_H + [z_H_BxLxD[None]]}
  states = {k: jax.lax.stop_gradient(jnp.concatenate([s.astype(v[-1].dtype) for s in v]))
            for k, v in states.items()}
  return new_carry, logits_BxSxV, q_halt_B, q_continue_B, states


def block_params(cfg: HRMConfig) -> int:
  """Matmul weights of one transformer block (attention + SwiGLU)."""
  D = cfg.hidden_size
  F = layers.swiglu_width(D, cfg.expansion)
  return 4 * D * D + 3 * D * F


def train_step_flops(cfg: HRMConfig, batch_size: int) -> float:
  """Matmul FLOPs of one train step (all devices together).

  One step runs one segment with gradient and, when halt_max_steps > 1, one
  more no-gradient segment for the Q-continue target. A segment makes N*T
  L-updates (L_layers blocks each) and N H-updates (H_layers blocks); with the
  one-step gradient only the last L- and H-update are differentiated, at twice
  their forward cost. Per token a block costs 2 * weights (matmuls) plus
  4 * L * D (attention scores and values over all L positions). Embedding
  gathers, norms and the optimizer are ignored (well under 1%). XLA's
  `cost_analysis()` counts a while-loop body once whatever its trip count, so
  it cannot give this number for a scanned recurrence.
  """
  L, D = cfg.num_positions, cfg.hidden_size
  per_block = 2 * block_params(cfg) + 4 * L * D
  N, T = cfg.H_cycles, cfg.L_cycles
  segment_blocks = N * T * cfg.L_layers + N * cfg.H_layers
  if cfg.one_step_gradient:
    backward_blocks = 2 * (cfg.L_layers + cfg.H_layers)
  else:
    backward_blocks = 2 * segment_blocks
  heads = 2 * D * cfg.vocab_size * cfg.seq_len + 2 * D * 2
  segments = 2 if cfg.halt_max_steps > 1 else 1
  per_row = (segments * segment_blocks + backward_blocks) * per_block * L + 3 * heads
  return float(per_row * batch_size)


FAMILY = models.register(models.Family(
    arch=HRMConfig.ARCH, config=HRMConfig, inner=HRMInner, segment=segment,
    init_variables=init_variables, train_step_flops=train_step_flops,
    # H_cycles x (L_cycles L-module calls + one H-module call).
    calls_per_segment=lambda cfg: cfg.H_cycles * (cfg.L_cycles + 1)))
