"""The `tokentrim` command: a thin Typer layer over the library (style.md §2.3).

Nothing here imports torch or transformers at module level: commands import the library inside
their bodies, so `tokentrim --help` stays instant.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback

import typer
from rich.console import Console

from .. import __version__
from ..errors import TokentrimError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="tokentrim",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help=(
        "Run LLaVA-family vision-language models faster by trimming visual tokens.\n\n"
        "Examples:\n\n"
        "  tokentrim chat --image cat.jpg -p 'What is in the picture?'\n\n"
        "  tokentrim chat -m llava-hf/llava-1.5-7b-hf --profile fastv -i cat.jpg -p 'Describe it.'\n\n"
        "  tokentrim profile --profile st3 --compare baseline -m random:cpu-576\n\n"
        "  tokentrim profiles list\n\n"
        "  tokentrim env"
    ),
)


def reports_errors(fn):
    """Turn library errors into `Error: ...` / `Hint: ...` on stderr and the documented exit code."""

    @functools.wraps(fn)  # Typer reads the signature through __wrapped__
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TokentrimError as e:
            _debug_traceback()
            err.print(f"Error: {e}", markup=False)
            if e.hint:
                err.print(f"Hint: {e.hint}", markup=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("Interrupted.", markup=False)
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - the one place that maps the unexpected to exit 1 / 5
            _debug_traceback()
            if type(e).__name__ == "OutOfMemoryError":
                err.print(f"Error: out of memory: {str(e).splitlines()[0]}", markup=False)
                err.print("Hint: try --quantize 4bit, a stronger trimming profile, or fewer images", markup=False)
                raise typer.Exit(5) from None
            err.print(f"Error: unexpected internal error: {type(e).__name__}: {e}", markup=False)
            err.print("Hint: rerun with TOKENTRIM_DEBUG=1 for the traceback, and report it", markup=False)
            raise typer.Exit(1) from None

    return wrapper


def _debug_traceback() -> None:
    if os.environ.get("TOKENTRIM_DEBUG") == "1":
        traceback.print_exc(file=sys.stderr)


def _version(value: bool) -> None:
    if value:
        out.print(f"tokentrim {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Run LLaVA-family vision-language models faster by trimming visual tokens."""


from . import calibrate as _calibrate  # noqa: E402,F401  (registers the commands)
from . import chat as _chat  # noqa: E402,F401
from . import env as _env  # noqa: E402,F401
from . import eval as _eval  # noqa: E402,F401
from . import profile as _profile  # noqa: E402,F401
from . import profiles as _profiles  # noqa: E402,F401


def main() -> None:
    app()
