"""The chat REPL driven through a real pseudo-terminal, the way a person uses it."""

from __future__ import annotations

import json

import pexpect
import pytest
from images import good_png
from terminal import spawn_chat

PROMPT = ">>> "


@pytest.fixture
def session(tmp_path):
    child = spawn_chat(tmp_path, max_new_tokens=5)
    child.logfile_read = transcript = _Transcript()
    yield child, transcript, tmp_path
    child.close(force=True)


class _Transcript:
    def __init__(self):
        self.text = ""

    def write(self, data):
        self.text += data

    def flush(self):
        pass


def say(child, line, *expected):
    child.sendline(line)
    for pattern in expected:
        child.expect_exact(pattern)
    child.expect_exact(PROMPT)


def test_repl_session(session):
    child, transcript, tmp_path = session
    red = good_png(tmp_path / "red.png")
    child.expect_exact("/help lists commands.")
    child.expect_exact(PROMPT)
    say(child, "/help", "Commands:", "/image PATH|URL", "/exit")
    say(child, f"/image {red}", f"Attached {red} (40x30) to your next message.")
    say(child, "/image missing.png", "Error: missing.png: no such file")  # the session goes on
    say(child, "/profile fastvv", "Error: unknown profile 'fastvv' (did you mean 'fastv'?)")
    say(child, "/profile fastv", "Trimming profile: fastv (fastv).")
    say(child, "What colour is it?", f"{red} 40x30 -> 16 visual tokens -> 16 in -> 8 kept", "TTFT")
    say(child, "/stats", "visual tokens per layer (prefill): [16, 16, 8, 8]", "KV entries per layer:", "time to first token")
    say(child, "/set max_new_tokens=100000", "max_new_tokens = 100000")
    child.sendline("Now talk for a long time.")
    child.expect_exact("Now talk for a long time.")  # the echo; the answer streams after it
    child.expect(r".{20}", timeout=30)  # some of the answer has arrived
    child.sendintr()  # Ctrl-C: stop this answer, keep the session
    child.expect_exact("stopped by Ctrl-C")
    child.expect_exact(PROMPT)
    say(child, "/save chat.json", "Saved chat.json")
    say(child, "/bogus", "Unknown command /bogus. /help lists commands.")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["profile"]["name"] == "fastv"
    assert [t["finish_reason"] for t in saved["history"]] == ["length", "interrupted"]
    assert saved["history"][0]["images"] == [str(red)]
    assert saved["settings"]["max_new_tokens"] == 100000
    # The whole transcript, in order (answers are random-weight noise, so only their frame is checked).
    markers = [
        "Chatting with random:tiny, trimming profile 'baseline'.", "Commands:", f"Attached {red}",
        "Error: missing.png: no such file", "Error: unknown profile 'fastvv'", "Trimming profile: fastv (fastv).",
        "What colour is it?", "-> 16 visual tokens -> 16 in -> 8 kept (layer-avg 12.0)", "5 tokens (length)",
        "visual tokens per layer (prefill): [16, 16, 8, 8]", "max_new_tokens = 100000", "Now talk for a long time.",
        "stopped by Ctrl-C", "Saved chat.json", "Unknown command /bogus.", "/exit",
    ]  # fmt: skip
    position = 0
    for marker in markers:
        found = transcript.text.find(marker, position)
        assert found >= 0, f"{marker!r} missing after position {position}:\n{transcript.text[position:]}"
        position = found + len(marker)


def test_ctrl_d_exits(session):
    child, _, _ = session
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_at_the_prompt_keeps_the_session(session):
    child, _, _ = session
    child.expect_exact(PROMPT)
    # CPython's readline can lose a SIGINT that lands while it is still setting up the line right
    # after drawing the prompt (it then waits for a key); a person presses Ctrl-C again, and so do
    # we. A REPL that dies or ignores Ctrl-C fails all three.
    for _ in range(3):
        child.sendintr()
        if child.expect_exact(["(Ctrl-D or /exit leaves)", pexpect.TIMEOUT], timeout=10) == 0:
            break
    else:
        pytest.fail("Ctrl-C at the prompt got no answer")
    say(child, "/help", "Commands:")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
