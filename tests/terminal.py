"""`tokentrim chat` in a real pseudo-terminal (pexpect), shared by the REPL tests."""

from __future__ import annotations

import os
import shutil
import signal

import pexpect
import pytest


def _default_sigint() -> None:
    # A job started in the background by a non-interactive shell (`cmd &`, `nohup`) inherits
    # SIGINT ignored, and Python keeps an ignored SIGINT ignored, so Ctrl-C would reach nothing:
    # the chat gets the disposition a person's terminal gives it, however the tests were launched.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_chat(tmp_path, max_new_tokens: int) -> pexpect.spawn:
    """`tokentrim chat -m random:tiny` in a 50x200 terminal, its history kept in tmp_path."""
    executable = shutil.which("tokentrim") or pytest.fail("the tokentrim console script is not installed")
    env = dict(os.environ, TOKENTRIM_HISTORY=str(tmp_path / "history"), NO_COLOR="1", COLUMNS="200", TERM="dumb")
    return pexpect.spawn(
        executable, ["chat", "-m", "random:tiny", "--max-new-tokens", str(max_new_tokens)], cwd=str(tmp_path), env=env,
        encoding="utf-8", timeout=60, dimensions=(50, 200), preexec_fn=_default_sigint,
    )  # fmt: skip
