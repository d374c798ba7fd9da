"""Dataset shapes and a model-FLOP count, so that nothing needs a dataset.

`compile_check.py` builds the train step for paper-scale datasets that take
hours (ARC) to build. The model only needs three numbers from a dataset
(vocabulary, sequence length, number of puzzle identifiers), so they are kept
here per family, taken from the reference's dataset.json files:

  sudoku: 11 tokens (pad, 0 = blank, 1-9), 81 cells, 1 identifier (blank only).
  maze:   6 tokens, 30 x 30 = 900 cells, 1 identifier.
  arc:    12 tokens (pad, eos, 10 colours), 30 x 30 = 900 cells and one
          identifier per augmented task + the blank one: ARC-AGI-1 with
          ConceptARC is 960 tasks x 1001 variants + 1 = 960,961; ARC-AGI-2 is
          1,120 tasks x 1001 + 1 = 1,121,121.

XLA's `cost_analysis()` counts the body of a while loop once, whatever its
trip count (HRM scans the no-gradient updates), so its FLOP count is far too
low for this model; `train_step_flops` counts matmul FLOPs analytically.
"""
# pylint: disable=invalid-name
import dataclasses

from hrm_jax.models import hrm
from hrm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class DatasetShape:
  vocab_size: int
  seq_len: int
  num_puzzle_identifiers: int


ARC1_IDENTIFIERS = 960 * 1001 + 1
ARC2_IDENTIFIERS = 1120 * 1001 + 1

PRESETS = {
    "sudoku": DatasetShape(11, 81, 1),
    "maze": DatasetShape(6, 900, 1),
    "arc": DatasetShape(12, 900, ARC1_IDENTIFIERS),
    "arc2": DatasetShape(12, 900, ARC2_IDENTIFIERS),
}


def preset_for(data_cfg) -> str:
  """Preset name of a data config: its family, `arc2` for ARC-AGI-2 sources."""
  name = data_cfg.name
  if name == "arc" and "arc2" in str(data_cfg.get("source", "")):
    return "arc2"
  if name not in PRESETS:
    raise ValueError(f"No dataset-shape preset for {name!r}; pass --vocab_size, "
                     "--seq_len and --num_puzzle_identifiers.")
  return name


def shape_for(data_cfg) -> DatasetShape:
  """The preset of `data_cfg`'s family, resized to its board or grid size
  (e.g. the 6x6 Sudoku and 7x7 mazes of the CPU variants)."""
  base = PRESETS[preset_for(data_cfg)]
  if data_cfg.name == "sudoku" and data_cfg.board_size != 9:
    # pad + blank + one token per digit
    return dataclasses.replace(base, vocab_size=data_cfg.board_size + 2,
                               seq_len=data_cfg.board_size ** 2)
  if data_cfg.name == "maze" and data_cfg.grid_size != 30:
    return dataclasses.replace(base, seq_len=data_cfg.grid_size ** 2)
  return base


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
  """The fields of data.DatasetMetadata that `train.model_config` reads."""
  vocab_size: int
  seq_len: int
  num_puzzle_identifiers: int


def block_params(cfg: hrm.HRMConfig) -> int:
  """Matmul weights of one transformer block (attention + SwiGLU)."""
  D = cfg.hidden_size
  F = layers.swiglu_width(D, cfg.expansion)
  return 4 * D * D + 3 * D * F


def train_step_flops(cfg: hrm.HRMConfig, batch_size: int) -> float:
  """Matmul FLOPs of one train step (all devices together).

  One step runs one segment with gradient and, when halt_max_steps > 1, one
  more no-gradient segment for the Q-continue target. A segment makes N*T
  L-updates (L_layers blocks each) and N H-updates (H_layers blocks); with the
  one-step gradient only the last L- and H-update are differentiated, at twice
  their forward cost. Per token a block costs 2 * weights (matmuls) plus
  4 * L * D (attention scores and values over all L positions). Embedding
  gathers, norms and the optimizer are ignored (well under 1%).
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
