"""Shared options and their defaults, in one visible block (cli.md "Flags")."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_PROFILE = "baseline"


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


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m",
        help="HF repo id, local directory, or random:<shape> (see `tokentrim env`). Default: the bundled demo model. Env: TOKENTRIM_MODEL.",
        envvar="TOKENTRIM_MODEL", show_default=False,
    ),
]  # fmt: skip
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit of a hub model.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Only use the local Hugging Face cache.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Weights and activations dtype (auto: fp16 on CUDA, fp32 on CPU).")]
QuantizeOpt = Annotated[Quantize, typer.Option("--quantize", help="bitsandbytes quantization of the decoder.")]
AttnOpt = Annotated[AttnImpl, typer.Option("--attn-impl", help="Attention implementation (auto = sdpa).")]
ProfileOpt = Annotated[
    str, typer.Option("--profile", help="Trimming profile: a name (see `tokentrim profiles list`) or a TOML path.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No spinner, no summary line.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Per-layer visual tokens and KV entries.")]


def check_device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise typer.BadParameter(f"'{value}' is not auto, cpu, cuda or cuda:N", param_hint="--device")
