"""Notebook plumbing: parameter validation and the run record papermill leaves behind."""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional


class ParameterError(ValueError):
    """A notebook parameter of the wrong type or with an impossible value."""


_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
          list: "a list", type(None): "None"}


def check(name: str, value: Any, types: type | tuple[type, ...], ok: Optional[Callable[[Any], bool]] = None,
          what: str = "") -> Any:
    """Raise :class:`ParameterError` with a readable message unless ``value`` fits.

    ``int`` is accepted where ``float`` is asked for; ``bool`` never passes for a number.
    """
    types = types if isinstance(types, tuple) else (types,)
    fits = any(isinstance(value, t) and not (isinstance(value, bool) and t in (int, float)) for t in types)
    if not fits and float in types and isinstance(value, int) and not isinstance(value, bool):
        fits = True
    if not fits:
        want = " or ".join(_TYPES.get(t, t.__name__) for t in types)
        raise ParameterError(f"parameter {name} = {value!r}: expected {want}")
    if ok is not None and value is not None and not ok(value):
        raise ParameterError(f"parameter {name} = {value!r}: {what or 'impossible value'}")
    return value


def positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# The record's mimetype: no frontend has a renderer for it, so JupyterLab, the classic notebook and
# the book show nothing, while the executed notebook keeps the numbers as JSON (gflnb.book.records).
RECORD_MIME = "application/vnd.gflnb.record+json"


def _json_safe(v: Any) -> Any:
    """``v`` with tensors and numpy scalars as numbers, NaN and inf as None (JSON has neither)."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        return _json_safe(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def record(**values: Any) -> None:
    """Leave the run's key numbers in the executed notebook, for :func:`gflnb.book.records` (the
    tests, the book build and ``python -m gflnb.book run``, which the sweep's points run).

    The record is a display output holding only :data:`RECORD_MIME` (no ``text/plain``), so nothing
    is printed and no page shows it; the chapters also tag the cell ``remove-cell``. Values that are
    not JSON become their ``str``. Outside IPython there is no notebook to keep it and IPython's
    ``display`` prints the mapping.
    """
    from IPython.display import display
    values = json.loads(json.dumps(_json_safe(values), default=str))
    display({RECORD_MIME: values}, raw=True)
