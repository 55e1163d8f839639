"""The scripts of benchmarks/ as modules, shared by the tests that check them (the folder is not a
package, and the scripts import `train_scenes_model` from scripts/ themselves)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark_module(name: str):
    """benchmarks/<name>.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
