"""`evolve`: `dataclasses.replace` for the core's frozen values, without its per-call cost.

`dataclasses.replace` re-runs `__init__` (with keyword matching and default handling) on every
call: about 10 µs, and the loop makes several per step, which the simulator multiplies by
millions. The core's values are plain frozen dataclasses (no `__post_init__`, no `InitVar`,
no `init=False` field), so copying the instance dictionary is equivalent. A field name that
does not exist is refused, as `replace` does.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def evolve(value: T, **changes: Any) -> T:
    fields = value.__dict__
    for name in changes:
        if name not in fields:
            raise TypeError(f"{type(value).__name__} has no field {name!r}")
    new = object.__new__(type(value))
    state = new.__dict__
    state.update(fields)
    state.update(changes)
    return new
