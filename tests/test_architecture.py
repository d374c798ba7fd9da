"""Who may import whom: the layering BUILD_NOTES' "Layout" promises.

The tools that use a trained model sit below the training stack; only the entry
point imports the trainer; benchmarks measure the package, not the launchers.
Read from the source with `ast` (nothing is imported).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(path: pathlib.Path) -> set[str]:
  """Fully qualified names a file imports (`from a import b` gives a and a.b)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


@pytest.mark.parametrize("tool", ["inference", "solve", "visualize"])
def test_tools_do_not_import_the_training_stack(tool):
  imports = imported_modules(ROOT / "hrm_jax" / f"{tool}.py")
  for module in ("hrm_jax.train", "hrm_jax.steps", "hrm_jax.optim"):
    assert module not in imports, f"hrm_jax/{tool}.py imports {module}"


def test_only_main_imports_the_trainer():
  offenders = [str(p.relative_to(ROOT)) for p in ROOT.glob("*/**/*.py")
               if p.parts[len(ROOT.parts)] in ("hrm_jax", "launch", "benchmarks",
                                               "experiments")
               and p.name != "main.py" and "hrm_jax.train" in imported_modules(p)]
  assert not offenders, offenders


def test_benchmarks_import_nothing_from_launch():
  offenders = [p.name for p in (ROOT / "benchmarks").glob("*.py")
               if any(m == "launch" or m.startswith("launch.")
                      for m in imported_modules(p))]
  assert not offenders, offenders
