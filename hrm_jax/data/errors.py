"""The one exception type of the data layer.

Every malformed input (bad CSV row, ragged ARC grid, missing directory, ...)
raises `DataError` with a message naming the file, the row or task and the
problem, so a user can fix the data without reading our code.
"""


class DataError(ValueError):
  """Raised when input data is malformed or inconsistent."""


def where(path, item=None) -> str:
  """Formats a location prefix such as "train.csv row 17: "."""
  text = str(path)
  if item is not None:
    text += f" {item}"
  return text + ": "
