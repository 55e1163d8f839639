"""The `tokentrim` command: a thin Typer layer over the library (style.md §2.3).

Nothing here imports torch or transformers at module level: commands import the library inside
their bodies, so `tokentrim --help` stays instant.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback

import typer
from rich.console import Console

from .. import __version__
from ..errors import Terminated, TokentrimError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit codes (README "Exit codes"): the library's errors carry theirs (errors.py); these are the rest.
EXIT_INTERNAL = 1
EXIT_OUT_OF_MEMORY = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

app = typer.Typer(
    name="tokentrim",
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Run LLaVA-family vision-language models faster by trimming visual tokens.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  tokentrim chat --image cat.jpg -p 'What is in the picture?'\n"
        "  tokentrim chat -m llava-hf/llava-1.5-7b-hf --profile fastv -i cat.jpg -p 'Describe it.'\n"
        "  tokentrim profile --profile st3 --compare baseline -m random:cpu-576\n"
        "  tokentrim profiles list\n"
        "  tokentrim env"
    ),
)


def say_error(message: str, hint: str | None = None) -> None:
    """`Error: ...` and `Hint: ...` on stderr, with anything that could drive the terminal escaped."""
    from ..render import terminal_safe

    err.print(f"Error: {terminal_safe(message, keep_newlines=False)}", markup=False)
    if hint:
        err.print(f"Hint: {terminal_safe(hint, keep_newlines=False)}", markup=False)


def _out_of_memory(e: BaseException) -> bool:
    if type(e).__name__ == "OutOfMemoryError":
        return True
    # The CPU allocator reports exhaustion as a plain RuntimeError.
    return isinstance(e, (RuntimeError, MemoryError)) and (
        isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "not enough memory" in str(e)
    )


def reports_errors(fn):
    """Turn library errors into `Error: ...` / `Hint: ...` on stderr and the documented exit code;
    remove any temporary file a signal left half-written."""

    @functools.wraps(fn)  # Typer reads the signature through __wrapped__
    def wrapper(*args, **kwargs):
        from ..files import remove_pending

        try:
            return fn(*args, **kwargs)
        except TokentrimError as e:
            _debug_traceback()
            say_error(str(e), e.hint)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("Interrupted.", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated:
            err.print("Terminated.", markup=False)
            raise typer.Exit(EXIT_TERMINATED) from None
        except typer.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - the one place that maps the unexpected to exit 1 / 3 / 5
            _debug_traceback()
            if _out_of_memory(e):
                say_error(f"out of memory: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                          "try --quantize 4bit, a stronger trimming profile, or fewer images")  # fmt: skip
                raise typer.Exit(EXIT_OUT_OF_MEMORY) from None
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT):
                say_error(f"cannot write: {e.strerror} ({e.filename or 'a temporary file'})",
                          "free disk space, raise the file size limit (ulimit -f) or set TMPDIR to a writable folder")  # fmt: skip
                raise typer.Exit(3) from None
            if isinstance(e, FileNotFoundError) and "No usable temporary directory" in str(e):
                say_error("no usable temporary directory (full, read-only, or a file size limit of 0)",
                          "set TMPDIR to a writable folder, or raise the file size limit (ulimit -f)")  # fmt: skip
                raise typer.Exit(6) from None
            say_error(f"unexpected internal error: {type(e).__name__}: {e}",
                      "rerun with TOKENTRIM_DEBUG=1 for the traceback, and report it")  # fmt: skip
            raise typer.Exit(EXIT_INTERNAL) from None
        finally:
            remove_pending()

    return wrapper


def _debug_traceback() -> None:
    if os.environ.get("TOKENTRIM_DEBUG") == "1":
        traceback.print_exc(file=sys.stderr)


def _version(value: bool) -> None:
    if value:
        out.print(f"tokentrim {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Run LLaVA-family vision-language models faster by trimming visual tokens."""
    if ctx.invoked_subcommand is None:  # bare `tokentrim`: the help, and success
        out.print(ctx.get_help(), markup=False)
        raise typer.Exit(0)


from . import calibrate as _calibrate  # noqa: E402,F401  (registers the commands)
from . import chat as _chat  # noqa: E402,F401
from . import env as _env  # noqa: E402,F401
from . import eval as _eval  # noqa: E402,F401
from . import profile as _profile  # noqa: E402,F401
from . import profiles as _profiles  # noqa: E402,F401


def main() -> None:
    """The console script (see tokentrim_cli/__main__.py for the signal set-up that precedes it)."""
    from ..__main__ import main as entry

    entry()


def run() -> None:
    app(prog_name="tokentrim")
