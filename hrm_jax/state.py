"""What a run holds: the train state (what an update changes) and the weights
(what a trained model is, for evaluation and the tools)."""
# pylint: disable=invalid-name
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from hrm_jax import models


@flax.struct.dataclass
class Weights:
  """A trained model without its optimiser: what evaluation, `solve`,
  `visualize`, conversion and fine-tuning need.

  Attributes:
    params: float32 dense weights (the EMA shadow when the run keeps one).
    buffers: fixed initial states H_init / L_init (never trained).
    puzzle_emb: puzzle-embedding table [num_puzzle_identifiers, E].
  """
  params: Any
  buffers: Any
  puzzle_emb: jax.Array

  def variables(self) -> dict[str, Any]:
    """The linen variables of the model module."""
    return {"params": self.params, "buffers": self.buffers}


@flax.struct.dataclass
class TrainState:
  """Everything an update changes, plus the fixed buffers.

  Attributes:
    step: number of updates applied (int32 scalar).
    params: float32 weights trained by AdamATan2.
    buffers: fixed H_init / L_init (never trained).
    puzzle_emb: puzzle-embedding table [num_puzzle_identifiers, E], trained by
      sparse SignSGD; kept outside `params` so that AdamATan2 and weight decay
      never see its ~1M rows (ARC).
    opt_state: AdamATan2 state of `params`.
    ema: exponential moving average of `params` (`config.ema_rate` > 0), or
      None. Like the reference's EMAHelper it covers the parameters only, not
      the puzzle table or the buffers.
  """
  step: jax.Array
  params: Any
  buffers: Any
  puzzle_emb: jax.Array
  opt_state: Any
  ema: Any = None

  def eval_weights(self) -> Weights:
    """The weights evaluation and checkpoints' users see: the EMA parameters
    when kept (with the live puzzle table), else the trained ones."""
    return Weights(params=self.params if self.ema is None else self.ema,
                   buffers=self.buffers, puzzle_emb=self.puzzle_emb)


def init_state(model, tx: optax.GradientTransformation, rng: jax.Array,
               keep_ema: bool = False) -> TrainState:
  """A fresh state: the family's initial variables, zero puzzle table."""
  cfg = model.config
  variables = models.family_of(cfg).init_variables(model, rng)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      buffers=variables["buffers"],
      # Zeros, as in the reference: every puzzle starts from the same prefix.
      puzzle_emb=jnp.zeros((cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim), jnp.float32),
      opt_state=tx.init(params),
      # The shadow starts at the initial weights (EMAHelper.register).
      ema=jax.tree.map(jnp.copy, params) if keep_ema else None,
  )


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
