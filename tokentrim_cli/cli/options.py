"""Shared options and their defaults, declared once (cli.md "Flags").

`with_model_options` adds the model-loading options to a command: the command's function takes a
`model_options: ModelOptions` instead of nine parameters, and `loading.load_model()` takes that.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
import typing
from dataclasses import dataclass, fields
from typing import Annotated

import typer

MAX_SEED = 2**63 - 1  # methods.base.MAX_SEED, without importing torch for --help

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_PROFILE = "baseline"


def check_seed(value: int | None) -> int | None:
    """A callback rather than min/max: Click would print the 19-digit bound in every --help."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise typer.BadParameter(f"must be in [0, 2**63 - 1], got {value}")
    return value


class DType(str, enum.Enum):
    auto = "auto"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


class Quantize(str, enum.Enum):
    none = "none"
    int8 = "8bit"
    int4 = "4bit"


class AttnImpl(str, enum.Enum):
    auto = "auto"
    sdpa = "sdpa"
    eager = "eager"


def check_device(value: str) -> str:
    """auto, cpu, cuda or cuda:N; anything else is a usage error (exit 2) before anything loads."""
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise typer.BadParameter(f"'{value}' is not auto, cpu, cuda or cuda:N")


def check_threads(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise typer.BadParameter(f"must be at least 1, got {value}")
    return value


def check_max_memory(value: str | None) -> str | None:
    """"0=20GiB,1=20GiB,cpu=64GiB": device (a GPU index, cpu or disk) = size."""
    if value is None:
        return None
    for part in value.split(","):
        device, equals, size = part.partition("=")
        if not equals or not (device.strip().isdigit() or device.strip() in ("cpu", "disk", "mps")) or not re.fullmatch(
            r"\d+(\.\d+)?\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)", size.strip()
        ):
            raise typer.BadParameter(f"'{part}' is not DEVICE=SIZE (e.g. 0=20GiB or cpu=64GiB)")
    return value


def parse_max_memory(value: str | None) -> dict | None:
    if value is None:
        return None
    pairs = (part.split("=", 1) for part in value.split(","))
    return {int(d) if d.strip().isdigit() else d.strip(): size.strip() for d, size in pairs}


@dataclass(frozen=True)
class ModelOptions:
    """Which model to load and how: the same for every command."""

    model: str | None = None
    revision: str | None = None
    offline: bool = False
    device: str = "auto"
    dtype: DType = DType.auto
    quantize: Quantize = Quantize.none
    attn_impl: AttnImpl = AttnImpl.auto
    threads: int | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_folder: str | None = None


_MODEL_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, default, annotation in (
        ("model", None, Annotated[str | None, typer.Option(
            "--model", "-m", metavar="ID|DIR|random:SHAPE", envvar="TOKENTRIM_MODEL", show_default=False,
            help="HF repo id, local directory, builtin:scenes or random:<shape> (see `tokentrim env`). "
                 "Default: the built-in scenes model.")]),
        ("revision", None, Annotated[str | None, typer.Option("--revision", metavar="REV", help="Branch, tag or commit of a hub model.")]),
        ("offline", False, Annotated[bool, typer.Option("--offline", help="Only use the local Hugging Face cache.")]),
        ("device", "auto", Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda|cuda:N", callback=check_device,
                                                       help="Where the model runs.")]),
        ("dtype", DType.auto, Annotated[DType, typer.Option("--dtype", help="Weights and activations (auto: fp16 on CUDA, fp32 on CPU).")]),
        ("quantize", Quantize.none, Annotated[Quantize, typer.Option("--quantize", help="bitsandbytes quantization of the decoder.")]),
        ("attn_impl", AttnImpl.auto, Annotated[AttnImpl, typer.Option("--attn-impl", help="Attention implementation (auto = sdpa).")]),
        ("threads", None, Annotated[int | None, typer.Option("--threads", metavar="N", callback=check_threads, show_default=False,
                                                             help="CPU threads for torch (default: torch's choice).")]),
        ("device_map", None, Annotated[str | None, typer.Option(
            "--device-map", metavar="auto|balanced|sequential", show_default=False,
            help="Spread a model too large for one device over several (accelerate); overrides --device.")]),
        ("max_memory", None, Annotated[str | None, typer.Option(
            "--max-memory", metavar="0=20GiB,1=20GiB,cpu=64GiB", callback=check_max_memory, show_default=False,
            help="With --device-map: memory each device may take.")]),
        ("offload_folder", None, Annotated[str | None, typer.Option(
            "--offload-folder", metavar="DIR", show_default=False,
            help="With --device-map: where layers that fit on no device are kept (disk offload).")]),
    )  # fmt: skip
]
_MODEL_NAMES = [f.name for f in fields(ModelOptions)]


def with_model_options(fn):
    """Give a command the shared model options; it receives them as `model_options`."""
    signature = inspect.signature(fn)
    # A __signature__ is taken as is (string annotations are not evaluated): resolve them here.
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
           if p.name != "model_options"]  # fmt: skip

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        options = ModelOptions(**{name: kwargs.pop(name) for name in _MODEL_NAMES if name in kwargs})
        return fn(*args, **kwargs, model_options=options)

    wrapper.__signature__ = signature.replace(parameters=own + _MODEL_PARAMETERS)
    return wrapper


def complete_profile(incomplete: str) -> list[str]:
    """Shell completion: the profile names reachable from here (./profiles, the user's, built-in)."""
    from ..profiles import available_profiles

    return [name for name in sorted(available_profiles()) if name.startswith(incomplete)]


ProfileOpt = Annotated[
    str, typer.Option("--profile", metavar="NAME|PATH", autocompletion=complete_profile,
                      help="Trimming profile: a name (see `tokentrim profiles list`) or a TOML path.")
]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No spinner, no summary line.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Per-layer visual tokens and KV entries.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", metavar="N", callback=check_seed, help="Seed for sampling.")]
