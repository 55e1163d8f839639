"""`tokentrim profiles list|show|validate`: the trimming profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ProfileError
from . import app, err, out, reports_errors

profiles_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "List, show and validate trimming profiles (TOML files).\n\n"
        "Examples:\n\n"
        "\b\n"
        "  tokentrim profiles list --wide\n"
        "  tokentrim profiles show fastv\n"
        "  tokentrim profiles validate my-profile.toml"
    ),
)
app.add_typer(profiles_app, name="profiles")


@profiles_app.command(
    "list",
    help=(
        "List the profiles reachable by name (./profiles, $TOKENTRIM_PROFILE_DIR, the user's folder, "
        "built-in), with where each method acts (vision: the tower or the projected features; prefill; "
        "decode), whether it needs attention scores, and whether it reads the question (methods that do "
        "not are safe across the turns of a chat)."
    ),
)
@reports_errors
def list_profiles(
    wide: Annotated[bool, typer.Option("--wide", help="Also the descriptions and files.")] = False,
) -> None:
    from .. import profiles, render

    good, bad = profiles.list_profiles()
    out.print(render.profiles_table(good, wide=wide), soft_wrap=False)
    for error in bad:  # named, not fatal: one bad file must not hide the others
        err.print(f"Warning: skipped {render.terminal_safe(error, keep_newlines=False)}", markup=False)


@profiles_app.command("show", help="Print a profile's TOML and where it was found.")
@reports_errors
def show(name: Annotated[str, typer.Argument(metavar="NAME|PATH", help="Profile name or TOML path.")]) -> None:
    from .. import profiles

    source, text = profiles.find_profile(name)
    profiles.parse_profile(text, source=source)  # refuse to show an invalid profile as if it were fine
    err.print(f"# {source}", markup=False)
    out.file.write(text if text.endswith("\n") else text + "\n")


@profiles_app.command("validate", help="Check profile files strictly; exit 3 if any is invalid.")
@reports_errors
def validate(paths: Annotated[list[Path], typer.Argument(metavar="FILE...", help="TOML files (or profile names).")]) -> None:
    from .. import profiles, render

    failures = 0
    for path in paths:
        try:
            profile = profiles.load_profile(str(path))
        except ProfileError as e:
            failures += 1
            err.print(f"invalid: {render.terminal_safe(e, keep_newlines=False)}", markup=False)
            continue
        out.print(f"ok: {render.terminal_safe(profile.source)} ({profile.method})", markup=False)
    if failures:
        raise typer.Exit(ProfileError.exit_code)
