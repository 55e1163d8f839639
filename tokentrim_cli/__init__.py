"""tokentrim: run LLaVA-family vision-language models faster by trimming visual tokens.

The library API (no CLI, never prints): `load_llava`, `load_profile`, `Trimmer`, `METHODS`.
Heavy modules (torch, transformers) load on first use, so `tokentrim --help` stays instant.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_llava": ("tokentrim_cli.model", "load_llava"),
    "load_profile": ("tokentrim_cli.profiles", "load_profile"),
    "Trimmer": ("tokentrim_cli.decoder", "Trimmer"),
    "METHODS": ("tokentrim_cli.methods", "METHODS"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'tokentrim_cli' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
