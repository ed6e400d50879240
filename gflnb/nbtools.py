"""Notebook plumbing: parameter validation and the one-line run record papermill leaves behind."""
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


def record(**values: Any) -> None:
    """Print the run's key numbers as one ``GFLNB_RECORD {json}`` line (read by tests and the book build)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if hasattr(v, "item"):
            return clean(v.item())
        return v
    values = {k: clean(v) for k, v in values.items()}
    print("GFLNB_RECORD " + json.dumps(values, default=str))
