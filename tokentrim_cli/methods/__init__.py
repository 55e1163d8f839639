"""The registry of trimming methods: one literal dict, nothing registered as a side effect."""

from __future__ import annotations

from ..errors import ProfileError
from .base import Method, NoTrimming
from .fastv import FastV
from .mustdrop import MustDrop
from .random_selection import RandomSelection
from .st3 import ST3
from .vtw import VTW

METHODS: dict[str, type[Method]] = {m.name: m for m in (NoTrimming, FastV, MustDrop, RandomSelection, ST3, VTW)}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ProfileError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}") from None
