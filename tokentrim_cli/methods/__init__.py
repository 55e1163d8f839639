"""The registry of trimming methods: one literal tuple, checked, nothing registered as a side effect.

Adding a method is one module (a `Method` subclass: its config, hooks and self-description), one
entry in `_ALL` below and one profile TOML in `profiles/`; the CLI's choices, `profiles list`, the
calibration search and the engine tests over every method all read this registry.
"""

from __future__ import annotations

import re

from ..errors import ProfileError
from .base import Method, NoTrimming
from .cdpruner import CDPruner
from .dart import DART
from .divprune import DivPrune
from .fastv import FastV
from .mustdrop import MustDrop
from .pyramiddrop import PyramidDrop
from .random_selection import RandomSelection
from .st3 import ST3
from .visionzip import VisionZip
from .vtw import VTW

_ALL = (NoTrimming, VTW, FastV, ST3, MustDrop, VisionZip, DART, DivPrune, CDPruner, PyramidDrop, RandomSelection)
NAME_RULE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def build_registry(methods) -> dict[str, type[Method]]:
    """name -> class; refuses duplicate and ill-formed names (lower case, digits, single hyphens)."""
    registry: dict[str, type[Method]] = {}
    for method in methods:
        name = getattr(method, "name", None)
        if not isinstance(name, str) or not NAME_RULE.match(name):
            raise ValueError(f"method name {name!r} of {method.__name__} is not a lower-case identifier like 'fastv'")
        if name in registry:
            raise ValueError(f"method name '{name}' is registered twice ({registry[name].__name__}, {method.__name__})")
        if not hasattr(method, "config_cls"):
            raise ValueError(f"method '{name}' has no config_cls")
        registry[name] = method
    return registry


METHODS: dict[str, type[Method]] = build_registry(_ALL)


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ProfileError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}") from None


def calibratable() -> dict[str, type[Method]]:
    """The methods `tokentrim calibrate --method` accepts: those that declare what may be tuned."""
    return {name: method for name, method in METHODS.items() if method.calibration is not None}


__all__ = ["METHODS", "CDPruner", "DART", "DivPrune", "FastV", "MustDrop", "NoTrimming", "PyramidDrop",
           "RandomSelection", "ST3", "VTW", "VisionZip", "build_registry", "calibratable", "get_method"]  # fmt: skip
