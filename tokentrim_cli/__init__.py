"""tokentrim: run LLaVA-family vision-language models faster by trimming visual tokens.

The library API (no CLI, never prints): `load_llava`, `load_profile`, `generate` (one answer about
images, with a trimming profile), `run` (any prepared batch: the one generation path),
`GenerationSettings`, `Trimmer` (the engine, for your own generate() calls), `METHODS`.
Heavy modules (torch, transformers) load on first use, so `tokentrim --help` stays instant.
"""

__version__ = "0.2.0"

_LAZY = {
    "load_llava": ("tokentrim_cli.model", "load_llava"),
    "load_image": ("tokentrim_cli.inputs", "load_image"),
    "load_profile": ("tokentrim_cli.profiles", "load_profile"),
    "generate": ("tokentrim_cli.generation", "generate"),
    "run": ("tokentrim_cli.generation", "run"),
    "prepare_batch": ("tokentrim_cli.generation", "prepare_batch"),
    "GenerationSettings": ("tokentrim_cli.generation", "GenerationSettings"),
    "Trimmer": ("tokentrim_cli.engine", "Trimmer"),
    "METHODS": ("tokentrim_cli.methods", "METHODS"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'tokentrim_cli' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
