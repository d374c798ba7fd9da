"""The Tiny Recursive Model (TRM) inner model and one segment (TRM spec §1).

TRM keeps HRM's two states under HRM's names, z_H = the answer y and z_L = the
latent z, but updates both with ONE network (`L_level`, 2 blocks by default):

  latent update (n = L_cycles times per cycle):  z <- f(z, y + x)
  answer update (once per cycle, after them):    y <- f(y, z)

The task is told apart only by whether x is in the injection. A segment runs
T = H_cycles such cycles; the first T - 1 without gradient, the last one fully
differentiated (all n + 1 network calls: "full backprop through the last
recursion", unlike HRM's one-step gradient).

Other differences from HRM: a puzzle-embedding prefix of `puzzle_emb_len` (16)
tokens instead of ceil(ndim / hidden); positions "rope", "learned" or "none";
optionally a token-mixing MLP (`mlp_t`) instead of attention (TRM-MLP, the
paper's Sudoku model). The ACT wrapper (`act.py`) halts on q_halt > 0 alone and
runs no Q-continue target pass (`no_ACT_continue`).

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

POS_ENCODINGS = ("rope", "learned", "none")
LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")

@dataclasses.dataclass(frozen=True)
class TRMConfig:
  """TRM hyperparameters: the one source of defaults (spec §1.1, `arch/trm.yaml`).

  Field names follow the reference's `TinyRecursiveReasoningModel_ACTV1Config`.
  """
  ARCH: ClassVar[str] = "trm"
  # Data-derived (set from the dataset's metadata).
  seq_len: int  # S: grid tokens per example (81 Sudoku, 900 Maze/ARC).
  vocab_size: int  # V: token ids (11 Sudoku, 6 Maze, 12 ARC).
  num_puzzle_identifiers: int  # rows of the puzzle-embedding table.
  # Architecture (reference defaults).
  puzzle_emb_ndim: int = 512  # E: width of one puzzle-embedding row; 0 = no puzzle embedding.
  puzzle_emb_len: int = 16  # P: prefix tokens the row is zero-padded into (>= ceil(E / D)).
  H_cycles: int = 3  # T: cycles per segment; the first T-1 run without gradient.
  L_cycles: int = 6  # n: latent updates per cycle (README: 6 Sudoku, 4 Maze/ARC).
  L_layers: int = 2  # blocks in the one network.
  hidden_size: int = 512  # D.
  expansion: float = 4.0  # SwiGLU inner width = swiglu_width(width, expansion).
  num_heads: int = 8  # attention heads (head dim D / heads); unused with mlp_t.
  pos_encodings: Literal["rope", "learned", "none"] = "rope"  # "none" pairs with mlp_t.
  mlp_t: bool = False  # True: token-mixing SwiGLU over the L positions instead of attention.
  rms_norm_eps: float = 1e-5  # epsilon of the weightless RMSNorm.
  rope_theta: float = 10000.0  # RoPE base.
  # ACT.
  halt_max_steps: int = 16  # N_sup: segments per example at most (always, at evaluation).
  halt_exploration_prob: float = 0.1  # chance a row must run U{2..N_sup} segments (training).
  no_ACT_continue: bool = True  # halt on q_halt > 0, no Q-continue target pass/loss.
  # Numerics.
  forward_dtype: str = "bfloat16"  # activations and states; weights stay float32.
  loss_type: Literal["stablemax_cross_entropy",
                     "softmax_cross_entropy"] = "stablemax_cross_entropy"  # token loss.
  # Implementation switches (not in the reference).
  scan: bool = True  # lax.scan over the recurrence; False = Python loop (same maths).
  attention_impl: str = "auto"  # "xla", "cudnn" (GPU flash attention) or "auto".
  remat: str = "none"  # "blocks" / "dots": rematerialise blocks (layers.REMAT_POLICIES).

  def __post_init__(self):
    for name in ("seq_len", "vocab_size", "num_puzzle_identifiers", "hidden_size",
                 "H_cycles", "L_cycles", "L_layers", "halt_max_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if self.puzzle_emb_ndim < 0 or self.puzzle_emb_len < 0:
      raise ValueError(f"puzzle_emb_ndim={self.puzzle_emb_ndim} and puzzle_emb_len="
                       f"{self.puzzle_emb_len} must be >= 0.")
    if self.puzzle_emb_ndim == 0 and self.puzzle_emb_len > 0:
      # The reference crashes here (states sized S + P, no prefix concatenated).
      raise ValueError(
          f"puzzle_emb_ndim=0 (no puzzle embedding) with puzzle_emb_len="
          f"{self.puzzle_emb_len}: there is nothing to fill the prefix with; set "
          "puzzle_emb_len=0 too.")
    min_len = -(self.puzzle_emb_ndim // -self.hidden_size)
    if self.puzzle_emb_ndim > 0 and self.puzzle_emb_len == 0:
      raise ValueError(
          f"puzzle_emb_len=0 with puzzle_emb_ndim={self.puzzle_emb_ndim}: the reference "
          "reads 0 as 'use ceil(puzzle_emb_ndim / hidden_size)'; here the prefix length "
          f"is always explicit: set puzzle_emb_len={min_len} for that rule (16 is TRM's).")
    if self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden_size:
      raise ValueError(
          f"puzzle_emb_ndim={self.puzzle_emb_ndim} does not fit in puzzle_emb_len="
          f"{self.puzzle_emb_len} prefix tokens of hidden_size={self.hidden_size}: raise "
          f"puzzle_emb_len to >= {min_len} or lower puzzle_emb_ndim to <= "
          f"{self.puzzle_emb_len * self.hidden_size}.")
    if self.pos_encodings not in POS_ENCODINGS:
      raise ValueError(f"pos_encodings={self.pos_encodings!r}: use one of {POS_ENCODINGS} "
                       "(the reference treats any other string as 'none').")
    if self.mlp_t and self.pos_encodings == "rope":
      raise ValueError(
          "pos_encodings='rope' with mlp_t=True: RoPE rotates attention queries and "
          "keys, and the mlp_t blocks have no attention, so it would do nothing (the "
          "token-mixing weights are position-specific already); use "
          "pos_encodings='none' (the paper's Sudoku-MLP) or 'learned'.")
    if not self.mlp_t:
      if self.hidden_size % self.num_heads:
        raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                         f"num_heads={self.num_heads}; choose num_heads dividing it.")
      if self.pos_encodings == "rope" and (self.hidden_size // self.num_heads) % 2:
        raise ValueError(f"pos_encodings='rope' needs an even head dim, got hidden_size / "
                         f"num_heads = {self.hidden_size // self.num_heads}; change "
                         "num_heads or use pos_encodings='learned'.")
    if self.expansion <= 0:
      raise ValueError(f"expansion={self.expansion} must be > 0.")
    if not 0.0 <= self.halt_exploration_prob <= 1.0:
      raise ValueError(f"halt_exploration_prob={self.halt_exploration_prob} must be in "
                       "[0, 1].")
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"loss_type={self.loss_type!r}: use one of {LOSS_TYPES}.")
    try:
      floating = jnp.issubdtype(jnp.dtype(self.forward_dtype), jnp.floating)
    except TypeError:
      floating = False
    if not floating:
      raise ValueError(f"forward_dtype={self.forward_dtype!r}: use 'bfloat16', "
                       "'float16' or 'float32'.")
    layers.check_switches(self)

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.forward_dtype)

  @property
  def num_positions(self) -> int:
    """L = S + P."""
    return self.seq_len + self.puzzle_emb_len

  @property
  def act_rules(self) -> models.ACTRules:
    """Halt on q_halt > 0 with no Q-continue target (`no_ACT_continue`, every shipped
    config), or HRM's rule and target (working here; it crashes in the original)."""
    return models.ACTRules(halt_on_q_halt_alone=self.no_ACT_continue,
                           q_continue_target=not self.no_ACT_continue)


class TRMInner(io.TwoStateModel):
  """Parameters and the single-call pieces of TRM; `segment` composes them.

  Method names and meanings follow `hrm.HRMInner`; the difference is that
  `L_update` and `H_update` call the same network. The input embedding (P =
  puzzle_emb_len prefix tokens) and the heads are `io.PuzzleModel`'s; the Q
  head reads position 0 of y, not detached.
  """
  config: TRMConfig

  def setup(self):
    cfg = self.config
    self.setup_io(head_dim=cfg.hidden_size // cfg.num_heads)
    # The one network of both updates (state-dict name L_level: no H_level exists).
    self.L_level = layers.ReasoningModule(
        num_layers=cfg.L_layers, num_heads=cfg.num_heads, expansion=cfg.expansion,
        rms_norm_eps=cfg.rms_norm_eps, attention_impl=cfg.attention_impl,
        mlp_t=cfg.mlp_t, num_positions=cfg.num_positions, remat=cfg.remat)
    # Fixed initial states y0, z0.
    self.setup_initial_states(("H_init", "L_init"))

  def H_update(self, z_H_BxLxD: Array, z_L_BxLxD: Array) -> Array:
    """Answer update y <- f(y, z): the same network, without x."""
    return self.L_level(z_H_BxLxD, z_L_BxLxD, self.cos_sin)


init_variables = io.init_variables


def _cycle(L_step, H_step, z_H_BxLxD: Array, z_L_BxLxD: Array, n: int, scan: bool,
           trace: bool = False):
  """n latent updates z <- L_step(y, z), then one answer update y <- H_step(y, z).

  Returns ((y, z), None) or, with `trace`, ((y, z), (z after each latent update
  [n,B,L,D], y [B,L,D])): a scan body's (carry, outputs).
  """
  if scan:
    def l_body(z_L, _):
      z_L = L_step(z_H_BxLxD, z_L)
      return z_L, (z_L if trace else None)

    z_L_BxLxD, zs_L = jax.lax.scan(l_body, z_L_BxLxD, length=n)
  else:
    zs_L = []
    for _ in range(n):
      z_L_BxLxD = L_step(z_H_BxLxD, z_L_BxLxD)
      if trace:
        zs_L.append(z_L_BxLxD)
    zs_L = jnp.stack(zs_L) if trace else None
  z_H_BxLxD = H_step(z_H_BxLxD, z_L_BxLxD)
  return (z_H_BxLxD, z_L_BxLxD), ((zs_L, z_H_BxLxD) if trace else None)


def segment(model: TRMInner, variables: Variables, z_H_BxLxD: Array,
            z_L_BxLxD: Array, inputs_BxS: Array, puzzle_rows_BxE: Array, *,
            trace: bool = False):
  """One deep-supervision segment (reference `Inner.forward`), as `hrm.segment`.

  T = H_cycles cycles of n = L_cycles latent updates then one answer update.
  Cycles 1..T-1 run on constants (no gradient to anything, weights included);
  cycle T is differentiated through all of its n + 1 network calls, so x (token
  and puzzle embeddings) gets gradient through its n injections y + x.

  Args:
    model, variables: the inner model and its {"params", "buffers"}.
    z_H_BxLxD, z_L_BxLxD: the carried answer y and latent z.
    inputs_BxS, puzzle_rows_BxE: the example and its puzzle-embedding rows.
    trace: (static) also return every intermediate state, for `analyze`. Off,
      the function and its compiled program are exactly those without it.

  Returns:
    ((z_H, z_L) new carry without gradient, logits [B,S,V], q_halt [B], q_continue [B])
    and, with `trace`, a fifth item {"z_L": [T*n,B,L,D] z after each latent
    update, "z_H": [T,B,L,D] y after each answer update}, in update order,
    without gradient (the last entries are the new carry).
  """
  cfg = model.config
  L_update = functools.partial(model.apply, method=TRMInner.L_update)
  H_update = functools.partial(model.apply, method=TRMInner.H_update)
  x_BxLxD = model.apply(variables, inputs_BxS, puzzle_rows_BxE,
                        method=TRMInner.embed_input)

  # The gradient boundary: the first T-1 cycles see constant weights, x and carry.
  no_grad_vars, no_grad_x, z_H_BxLxD, z_L_BxLxD = jax.lax.stop_gradient(
      (variables, x_BxLxD, z_H_BxLxD, z_L_BxLxD))
  # Weights are cast once, outside the loop, instead of in every update.
  no_grad_vars = layers.cast_floats(no_grad_vars, cfg.dtype)

  def frozen_cycle(z_HL, _):
    return _cycle(lambda z_H, z_L: L_update(no_grad_vars, z_L, z_H, no_grad_x),
                  lambda z_H, z_L: H_update(no_grad_vars, z_H, z_L),
                  *z_HL, cfg.L_cycles, cfg.scan, trace)

  # With `trace`, (z's [k*n,B,L,D], y's [k,B,L,D]) of each group of k cycles.
  traced = []
  T = cfg.H_cycles
  if cfg.scan and T > 1:
    (z_H_BxLxD, z_L_BxLxD), ys = jax.lax.scan(
        frozen_cycle, (z_H_BxLxD, z_L_BxLxD), length=T - 1)
    if trace:
      zs_L, zs_H = ys  # [T-1, n, B, L, D], [T-1, B, L, D]
      traced.append((zs_L.reshape((-1,) + zs_L.shape[2:]), zs_H))
  else:
    for _ in range(T - 1):
      (z_H_BxLxD, z_L_BxLxD), ys = frozen_cycle((z_H_BxLxD, z_L_BxLxD), None)
      if trace:
        traced.append((ys[0], ys[1][None]))

  # The last cycle, differentiated: trainable weights and x.
  (z_H_BxLxD, z_L_BxLxD), ys = _cycle(
      lambda z_H, z_L: L_update(variables, z_L, z_H, x_BxLxD),
      lambda z_H, z_L: H_update(variables, z_H, z_L),
      z_H_BxLxD, z_L_BxLxD, cfg.L_cycles, cfg.scan, trace)
  logits_BxSxV, q_halt_B, q_continue_B = model.apply(
      variables, z_H_BxLxD, method=TRMInner.heads)
  new_carry = jax.lax.stop_gradient((z_H_BxLxD, z_L_BxLxD))
  if not trace:
    return new_carry, logits_BxSxV, q_halt_B, q_continue_B
  traced.append((ys[0], ys[1][None]))
  dtype = z_H_BxLxD.dtype
  states = {"z_L": jnp.concatenate([zs.astype(dtype) for zs, _ in traced]),
            "z_H": jnp.concatenate([ys.astype(dtype) for _, ys in traced])}
  return new_carry, logits_BxSxV, q_halt_B, q_continue_B, jax.lax.stop_gradient(states)


def block_flops_per_row(cfg: TRMConfig) -> int:
  """Forward matmul FLOPs of one block on one example ([L, D] activations).

  A matmul costs 2 * weights per vector it is applied to: the channel SwiGLU
  (and attention's projections) to L vectors of width D, the token-mixing
  SwiGLU to D vectors of width L. Attention adds 4 * L * D per token (scores
  and values over all L positions).
  """
  L, D = cfg.num_positions, cfg.hidden_size
  F = layers.swiglu_width(D, cfg.expansion)
  flops = 2 * L * (3 * F * D)  # channel SwiGLU: gate_up [D, 2F] + down [F, D]
  if cfg.mlp_t:
    F_t = layers.swiglu_width(L, cfg.expansion)
    flops += 2 * D * (3 * F_t * L)
  else:
    flops += 2 * L * (4 * D * D) + 4 * L * L * D  # qkv [D, 3D] + o [D, D]; scores
  return flops


def train_step_flops(cfg: TRMConfig, batch_size: int) -> float:
  """Matmul FLOPs of one train step (all devices together).

  One step runs one segment (TRM has no Q-continue target pass): T * (n + 1)
  network calls of L_layers blocks forward, and the backward of the n + 1
  calls of the last cycle at twice their forward cost; the LM and Q heads run
  forward and backward (3x). Embedding gathers, norms, the loss and the
  optimiser are ignored (well under 1%). E.g. Sudoku (T 3, n 6): 21 forward
  + 2 * 7 backward = 35 call-equivalents of 2 blocks each.
  """
  T, n = cfg.H_cycles, cfg.L_cycles
  calls = T * (n + 1) + 2 * (n + 1)
  heads = 2 * cfg.hidden_size * cfg.vocab_size * cfg.seq_len + 2 * cfg.hidden_size * 2
  per_row = calls * cfg.L_layers * block_flops_per_row(cfg) + 3 * heads
  return float(per_row * batch_size)


FAMILY = models.register(models.Family(
    arch=TRMConfig.ARCH, config=TRMConfig, inner=TRMInner, segment=segment,
    init_variables=init_variables, train_step_flops=train_step_flops,
    # T cycles of n latent updates and one answer update, one network each.
    calls_per_segment=lambda cfg: cfg.H_cycles * (cfg.L_cycles + 1)))
