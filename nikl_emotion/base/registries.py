"""Name -> object registries (classification heads, losses): one rule for adding to any of them."""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "add_named",
]

_Named = TypeVar("_Named")


def add_named(registry: dict[str, _Named], item: _Named, what: str) -> _Named:
    """Add `item` under its `name`, which must be its own (not empty, not registered yet); returns it."""
    name = getattr(item, "name", "")
    if not name or name in registry:
        raise ValueError(f"a {what} needs a name of its own, got {name!r} (registered: {', '.join(registry)})")
    registry[name] = item
    return item
