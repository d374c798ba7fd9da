"""What every model family shares around its recurrence: the input embedding
(tokens, the zero-padded puzzle-embedding prefix, positions), the LM and Q
heads and the fixed initial states.

`PuzzleModel` is the linen base of `transformer.TransformerInner` and, through
`TwoStateModel` (two carried states), of `hrm.HRMInner` and `trm.TRMInner`; each family's `setup` calls `setup_io` and
`setup_initial_states` and adds its own networks. The parameter names
(`embed_tokens`, `embed_pos`, `lm_head`, `q_head`, buffers `H_init`/`L_init`)
are the originals' state-dict names, so conversion maps them one to one. The
config must provide vocab_size, hidden_size, num_positions, seq_len,
puzzle_emb_ndim, puzzle_emb_len, pos_encodings ("rope", "learned" or "none"),
rope_theta and dtype.
"""
# pylint: disable=invalid-name
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrm_jax.models import layers

Array = jax.Array


class PrefixShape:
  """Config mixin: P = ceil(E / D) puzzle-embedding prefix tokens and L = S + P
  positions (HRM's rule; TRM gives P itself)."""

  @property
  def puzzle_emb_len(self) -> int:
    """Number of prefix tokens the puzzle embedding occupies (P)."""
    return -(self.puzzle_emb_ndim // -self.hidden_size)

  @property
  def num_positions(self) -> int:
    """L = P + S."""
    return self.seq_len + self.puzzle_emb_len


class PuzzleModel(nn.Module):
  """The shared I/O of a recurrent puzzle model (see the module docstring)."""
  config: Any

  def setup_io(self, head_dim: int) -> None:
    """Token and position embeddings, and the heads."""
    cfg = self.config
    D = cfg.hidden_size
    embed_std = 1.0 / math.sqrt(D)
    self.embed_tokens = layers.CastedEmbed(cfg.vocab_size, D, embed_std, cfg.dtype)
    self.cos_sin = None
    if cfg.pos_encodings == "learned":
      self.embed_pos = layers.CastedEmbed(cfg.num_positions, D, embed_std, cfg.dtype)
    elif cfg.pos_encodings == "rope":
      self.cos_sin = layers.rope_cos_sin(cfg.num_positions, head_dim, cfg.rope_theta)
    self.lm_head = layers.CastedDense(cfg.vocab_size)
    # Q head starts at weight 0, bias -5: sigmoid(-5) ~ 0.007, so the model begins
    # by almost never halting early and Q-learning has a stable starting point.
    self.q_head = layers.CastedDense(2, use_bias=True,
                                     kernel_init=nn.initializers.zeros,
                                     bias_init=nn.initializers.constant(-5.0))

  def setup_initial_states(self, names: tuple[str, ...] = ("H_init", "L_init")) -> None:
    """Fixed initial states: sampled once (truncated normal, std 1, in the forward
    dtype), never trained: the reference's buffers."""
    cfg = self.config
    init_state = lambda: layers.truncated_normal(1.0)(
        self.make_rng("params"), (cfg.hidden_size,)).astype(cfg.dtype)
    for name in names:
      setattr(self, name, self.variable("buffers", name, init_state))

  def embed_input(self, inputs_BxS: Array, puzzle_rows_BxE: Array) -> Array:
    """x = [prefix ; tokens] (+ learned positions), scaled by sqrt(D).

    The puzzle row is zero-padded to P * D values and reshaped row-major into
    the P prefix tokens (with E = D: token 0 holds the row, the rest are 0).
    """
    cfg = self.config
    B = inputs_BxS.shape[0]
    x_BxLxD = self.embed_tokens(inputs_BxS)
    if cfg.puzzle_emb_ndim > 0:
      rows_BxE = puzzle_rows_BxE.astype(cfg.dtype)
      pad = cfg.puzzle_emb_len * cfg.hidden_size - cfg.puzzle_emb_ndim
      prefix_BxPxD = jnp.pad(rows_BxE, ((0, 0), (0, pad))).reshape(
          B, cfg.puzzle_emb_len, cfg.hidden_size)
      x_BxLxD = jnp.concatenate([prefix_BxPxD, x_BxLxD], axis=1)
    if cfg.pos_encodings == "learned":
      positions_LxD = self.embed_pos(jnp.arange(cfg.num_positions))
      x_BxLxD = 0.707106781 * (x_BxLxD + positions_LxD)  # keeps the variance at 1
    return math.sqrt(cfg.hidden_size) * x_BxLxD

  def heads(self, z_H_BxLxD: Array) -> tuple[Array, Array, Array]:
    """LM logits over the grid tokens (the prefix dropped), and the two Q logits
    (float32) read at position 0, the first prefix token."""
    logits_BxSxV = self.lm_head(z_H_BxLxD)[:, self.config.puzzle_emb_len:]
    q_logits_Bx2 = self.q_head(z_H_BxLxD[:, 0]).astype(jnp.float32)
    return logits_BxSxV, q_logits_Bx2[:, 0], q_logits_Bx2[:, 1]


class TwoStateModel(PuzzleModel):
  """A PuzzleModel with two carried states, z_H and z_L (HRM, TRM): the
  subclass's `setup` makes `L_level` (and HRM an `H_level`), and its
  `H_update(z_H, z_L)` says which network updates z_H."""

  def L_update(self, z_L_BxLxD: Array, z_H_BxLxD: Array, x_BxLxD: Array) -> Array:
    """z_L <- L_level(z_L, z_H + x): the input is injected into the fast/latent state."""
    return self.L_level(z_L_BxLxD, z_H_BxLxD + x_BxLxD, self.cos_sin)

  def initial_states(self) -> tuple[Array, Array]:
    return self.H_init.value, self.L_init.value

  def __call__(self, inputs_BxS: Array, puzzle_rows_BxE: Array):
    """Touches every piece once; used only by `init`."""
    x_BxLxD = self.embed_input(inputs_BxS, puzzle_rows_BxE)
    B, L, D = x_BxLxD.shape
    z_H_BxLxD = jnp.broadcast_to(self.H_init.value, (B, L, D))
    z_L_BxLxD = self.L_update(jnp.broadcast_to(self.L_init.value, (B, L, D)),
                              z_H_BxLxD, x_BxLxD)
    z_H_BxLxD = self.H_update(z_H_BxLxD, z_L_BxLxD)
    return self.heads(z_H_BxLxD)


def init_variables(model: PuzzleModel, rng: jax.Array, batch_size: int = 1):
  """{"params": float32 weights, "buffers": the fixed initial states}."""
  cfg = model.config
  inputs_BxS = jnp.zeros((batch_size, cfg.seq_len), jnp.int32)
  rows_BxE = jnp.zeros((batch_size, cfg.puzzle_emb_ndim), jnp.float32)
  return model.init(rng, inputs_BxS, rows_BxE)
