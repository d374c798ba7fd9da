"""The "matched transformer" baseline (TRM repo `transformers_baseline.py`).

The ARC-Prize analysis of HRM replaced its two recurrent levels by one plain
stack of `H_layers` (8) post-norm blocks: one state z_H, one call per segment
(z_H <- f(z_H, x), input injection x), fully differentiated; the ACT outer loop,
embeddings and heads are HRM's (prefix of ceil(puzzle_emb_ndim / hidden)
tokens, Q head on position 0). There is no recurrence inside a segment, so no
scan and no gradient boundary other than the detached carry.

The carry keeps HRM's two-state shape for every model family: z_L is unused
here, `segment` returns it unchanged, and `act.initial_carry` sizes it [B, L, D]
(zeros; `initial_states` gives zeros for it too, so a reset keeps it zero).

Halting (act.py): in training, q_halt > q_continue with exploration when
`act_enabled`; at evaluation the same rule only when `act_inference` (or the
caller asks for adaptive halting). The reference's loss head never requests
the Q-continue target, so no target pass runs and the q_continue logit gets no
gradient.

Dimension letters: B batch, S grid tokens, P puzzle-embedding prefix tokens,
L = P + S tokens, D hidden, E puzzle-embedding width, V vocabulary.
"""
# pylint: disable=invalid-name
import dataclasses
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from hrm_jax import models
from hrm_jax.models import io, layers

Array = jax.Array
Variables = Any  # {"params": ..., "buffers": ...}

LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")

@dataclasses.dataclass(frozen=True)
class TransformerConfig(io.PrefixShape):
  """Baseline hyperparameters; names follow the reference's `Model_ACTV2Config`.

  The reference's `H_cycles` ("kept for compatibility") is not a field: one
  call per segment is the model. Its yaml uses num_heads=12 with hidden 512
  (head dim 42, attention width 504); that works here too (attention then runs
  on the dense XLA path: cuDNN needs a head dim that is a multiple of 8).
  """
  ARCH: ClassVar[str] = "transformer"
  # Data-derived.
  seq_len: int  # S: grid tokens per example.
  vocab_size: int  # V.
  num_puzzle_identifiers: int  # rows of the puzzle-embedding table.
  # Architecture.
  puzzle_emb_ndim: int = 512  # E; prefix of ceil(E / D) tokens; 0 = none.
  H_layers: int = 8  # blocks of the one stack.
  hidden_size: int = 512  # D.
  expansion: float = 4.0  # SwiGLU inner width = swiglu_width(D, expansion).
  num_heads: int = 8  # head dim = D // num_heads (the reference's yaml: 12).
  pos_encodings: Literal["rope", "learned"] = "rope"  # the reference has no "none".
  rms_norm_eps: float = 1e-5  # epsilon of the weightless RMSNorm.
  rope_theta: float = 10000.0  # RoPE base.
  # ACT.
  halt_max_steps: int = 16  # segments per example at most.
  halt_exploration_prob: float = 0.1  # chance a row must run U{2..max} segments.
  act_enabled: bool = True  # training halts on q_halt > q_continue; False: always max.
  act_inference: bool = False  # evaluation halts on q_halt > q_continue too.
  # Numerics.
  forward_dtype: str = "bfloat16"  # activations and states; weights stay float32.
  loss_type: Literal["stablemax_cross_entropy",
                     "softmax_cross_entropy"] = "stablemax_cross_entropy"  # token loss.
  # Implementation switch (not in the reference).
  attention_impl: str = "auto"  # "xla", "cudnn" (GPU flash attention) or "auto".
  remat: str = "none"  # "blocks" / "dots": rematerialise blocks (layers.REMAT_POLICIES).

  def __post_init__(self):
    for name in ("seq_len", "vocab_size", "num_puzzle_identifiers", "hidden_size",
                 "num_heads", "H_layers", "halt_max_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if self.puzzle_emb_ndim < 0:
      raise ValueError(f"puzzle_emb_ndim={self.puzzle_emb_ndim} must be >= 0.")
    if self.num_heads > self.hidden_size:
      raise ValueError(f"num_heads={self.num_heads} > hidden_size={self.hidden_size} "
                       "leaves a head dim of 0; use fewer heads.")
    if self.pos_encodings not in ("rope", "learned"):
      raise ValueError(f"pos_encodings={self.pos_encodings!r}: use 'rope' or 'learned' "
                       "(the reference baseline raises on anything else).")
    if self.pos_encodings == "rope" and self.head_dim % 2:
      raise ValueError(f"pos_encodings='rope' needs an even head dim, got hidden_size // "
                       f"num_heads = {self.head_dim}; change num_heads or use 'learned'.")
    layers.check_switches(self)
    if self.attention_impl == "cudnn" and self.head_dim % 8:
      raise ValueError(f"attention_impl='cudnn' needs a head dim that is a multiple of 8, "
                       f"got hidden_size // num_heads = {self.head_dim}; use 'auto' or "
                       "'xla', or change num_heads.")
    if not 0.0 <= self.halt_exploration_prob <= 1.0:
      raise ValueError(f"halt_exploration_prob={self.halt_exploration_prob} must be in "
                       "[0, 1].")
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"loss_type={self.loss_type!r}: use one of {LOSS_TYPES}.")

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.forward_dtype)

  @property
  def act_rules(self) -> models.ACTRules:
    """q_halt > q_continue when `act_enabled` (training) / `act_inference` (eval);
    no Q-continue target: the reference's loss head never asks for one."""
    return models.ACTRules(halt_on_q_halt_alone=False, q_continue_target=False,
                           train_halting=self.act_enabled,
                           eval_halting=self.act_inference)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads



class TransformerInner(io.PuzzleModel):
  """Parameters and pieces of the baseline; `segment` composes them (the input
  embedding and the heads are `io.PuzzleModel`'s)."""
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.setup_io(head_dim=cfg.head_dim)
    # cuDNN flash attention needs head dims that are multiples of 8 (not the
    # reference yaml's 42): "auto" falls back to dense attention there.
    impl = cfg.attention_impl
    if impl == "auto" and cfg.head_dim % 8:
      impl = "xla"
    self.H_level = layers.ReasoningModule(
        num_layers=cfg.H_layers, num_heads=cfg.num_heads, expansion=cfg.expansion,
        rms_norm_eps=cfg.rms_norm_eps, attention_impl=impl,
        remat=cfg.remat)
    self.setup_initial_states(("H_init",))

  def H_update(self, z_H_BxLxD: Array, x_BxLxD: Array) -> Array:
    """The one call of a segment: z_H <- f(z_H, x)."""
    return self.H_level(z_H_BxLxD, x_BxLxD, self.cos_sin)

  def initial_states(self) -> tuple[Array, Array]:
    """(H_init, zeros): the second is what a reset writes into the unused z_L."""
    return self.H_init.value, jnp.zeros_like(self.H_init.value)

  def __call__(self, inputs_BxS: Array, puzzle_rows_BxE: Array):
    """Touches every piece once; used only by `init`."""
    x_BxLxD = self.embed_input(inputs_BxS, puzzle_rows_BxE)
    z_H_BxLxD = jnp.broadcast_to(self.H_init.value, x_BxLxD.shape)
    return self.heads(self.H_update(z_H_BxLxD, x_BxLxD))


init_variables = io.init_variables


def segment(model: TransformerInner, variables: Variables, z_H_BxLxD: Array,
            z_L_BxLxD: Any, inputs_BxS: Array, puzzle_rows_BxE: Array):
  """One segment: one differentiated call of the stack (reference `Inner.forward`).

  Args:
    model, variables: the baseline and its {"params", "buffers"}.
    z_H_BxLxD: the carried state (a constant: no gradient flows into it).
    z_L_BxLxD: unused; returned as given (array or None).
    inputs_BxS, puzzle_rows_BxE: the example and its puzzle-embedding rows.

  Returns:
    ((z_H, z_L) new carry without gradient, logits [B,S,V], q_halt [B], q_continue [B]).
  """
  x_BxLxD = model.apply(variables, inputs_BxS, puzzle_rows_BxE,
                        method=TransformerInner.embed_input)
  z_H_BxLxD = model.apply(variables, jax.lax.stop_gradient(z_H_BxLxD), x_BxLxD,
                          method=TransformerInner.H_update)
  logits_BxSxV, q_halt_B, q_continue_B = model.apply(
      variables, z_H_BxLxD, method=TransformerInner.heads)
  return ((jax.lax.stop_gradient(z_H_BxLxD), z_L_BxLxD), logits_BxSxV, q_halt_B,
          q_continue_B)


def block_params(cfg: TransformerConfig) -> int:
  """Weights of one block: qkv [D, 3HK], o [HK, D], gate_up [D, 2F], down [F, D]."""
  D, HK = cfg.hidden_size, cfg.num_heads * cfg.head_dim
  F = layers.swiglu_width(D, cfg.expansion)
  return 3 * HK * D + HK * D + 3 * F * D


def param_count(cfg: TransformerConfig) -> int:
  """Trainable parameters (the puzzle table and H_init are buffers, not counted)."""
  D, V = cfg.hidden_size, cfg.vocab_size
  count = cfg.H_layers * block_params(cfg) + 2 * V * D + 2 * D + 2
  if cfg.pos_encodings == "learned":
    count += cfg.num_positions * D
  return count


def train_step_flops(cfg: TransformerConfig, batch_size: int) -> float:
  """Matmul FLOPs of one train step: one segment forward + backward (3x).

  Per token a block costs 2 * weights plus 4 * L * HK (attention scores and
  values); the heads as in `trm.train_step_flops`.
  """
  L, D = cfg.num_positions, cfg.hidden_size
  per_block = 2 * block_params(cfg) + 4 * L * cfg.num_heads * cfg.head_dim
  heads = 2 * D * cfg.vocab_size * cfg.seq_len + 2 * D * 2
  return float(3 * (cfg.H_layers * per_block * L + heads) * batch_size)


FAMILY = models.register(models.Family(
    arch=TransformerConfig.ARCH, config=TransformerConfig, inner=TransformerInner,
    segment=segment, init_variables=init_variables, train_step_flops=train_step_flops,
    calls_per_segment=lambda cfg: 1))  # one pass of the stack per segment
