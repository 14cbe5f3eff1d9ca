"""Name -> object registries (classification heads, losses; the ordered backends check names the same way): one
rule for adding to any of them."""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "check_own_name",
    "add_named",
]

_Named = TypeVar("_Named")


def check_own_name(name: str, registered: list[str], what: str) -> None:
    """A new `what`'s name must be its own: not empty, not one of the `registered` names."""
    if not name or name in registered:
        raise ValueError(f"a {what} needs a name of its own, got {name!r} (registered: {', '.join(registered)})")


def add_named(registry: dict[str, _Named], item: _Named, what: str) -> _Named:
    """Add `item` under its `name`, which must be its own (not empty, not registered yet); returns it."""
    name = getattr(item, "name", "")
    check_own_name(name, list(registry), what)
    registry[name] = item
    return item
