"""The train state and its creation, already sharded, from abstract shapes."""
# pylint: disable=invalid-name
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from hrm_jax import sharding
from hrm_jax.models import act, hrm


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
  """
  step: jax.Array
  params: Any
  buffers: Any
  puzzle_emb: jax.Array
  opt_state: Any


def init_state(model: hrm.HRMInner, tx: optax.GradientTransformation,
               rng: jax.Array) -> TrainState:
  variables = hrm.init_variables(model, rng)
  cfg = model.config
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      buffers=variables["buffers"],
      # Zeros, as in the reference: every puzzle starts from the same prefix.
      puzzle_emb=jnp.zeros((cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim), jnp.float32),
      opt_state=tx.init(variables["params"]),
  )


def create_sharded_state(model: hrm.HRMInner, tx: optax.GradientTransformation,
                         rng: jax.Array, mesh) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (no host round trip).

  Returns:
    (state, state_shardings).
  """
  abstract = jax.eval_shape(lambda k: init_state(model, tx, k), rng)
  shardings = sharding.state_shardings(mesh, abstract)
  state = jax.jit(lambda k: init_state(model, tx, k), out_shardings=shardings)(rng)
  return state, shardings


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def create_sharded_carry(config: hrm.HRMConfig, batch_size: int, mesh) -> tuple[Any, Any]:
  """The initial ACT carry, split along the batch. Returns (carry, shardings)."""
  make: Callable[[], act.ACTCarry] = lambda: act.initial_carry(config, batch_size)
  shardings = sharding.batch_shardings(mesh, jax.eval_shape(make))
  return jax.jit(make, out_shardings=shardings)(), shardings
