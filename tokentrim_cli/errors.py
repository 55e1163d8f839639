"""Errors the library raises; the CLI maps each to a one-line message and an exit code (cli.md)."""

from __future__ import annotations


class TokentrimError(Exception):
    """Base class: a message for the user, an optional hint, and the exit code the CLI uses."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(TokentrimError):
    """A bad combination of options, caught before any model loads."""

    exit_code = 2


class InputError(TokentrimError):
    """Bad input data: an unreadable image, a malformed dataset file."""

    exit_code = 3


class ProfileError(InputError):
    """A trimming profile that cannot be found, parsed or validated."""


class OutputError(InputError):
    """An output target that cannot be written: a directory, a full or read-only disk (exit 3, as bad input)."""


class ModelUnavailableError(TokentrimError):
    """The model cannot be loaded: not found, not cached while offline, or not a LLaVA-family model."""

    exit_code = 4


class OutOfMemoryError(TokentrimError):
    """The device ran out of memory."""

    exit_code = 5


class EnvironmentProblem(TokentrimError):
    """A capability the request needs is missing (CUDA, bitsandbytes on this device)."""

    exit_code = 6


class UnsupportedError(TokentrimError):
    """The model or setting is outside what the trimming engine supports (e.g. sliding-window layers)."""

    exit_code = 3


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C (exit 143).

    A BaseException, like KeyboardInterrupt, so `except Exception` never swallows it; not a
    KeyboardInterrupt, so a chat's "Ctrl-C stops the answer" does not catch it.
    """


def raise_terminated(signum, frame) -> None:
    raise Terminated()
