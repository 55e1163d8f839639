"""The interactive side of `tokentrim chat`: a REPL with slash commands, streamed answers, Ctrl-C."""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

from .. import render
from ..errors import TokentrimError
from . import err, out, say_error

HELP = """Commands:
  /image PATH|URL   attach an image to your next message (several allowed)
  /clear            forget the conversation and any pending images
  /profile NAME     switch the trimming profile (applies from the next answer)
  /stats            last answer: visual tokens per layer, KV entries, time to first token, tokens/s
  /set key=value    max_new_tokens, temperature, top_p, seed
  /save [FILE]      write settings, profile and history as JSON
  /load FILE        continue a conversation saved with /save
  /help             this list
  /exit             leave (Ctrl-D too). Ctrl-C stops the current answer and keeps the session.
A line ending in \\ continues on the next line; \"\"\" on a line of its own starts and ends a
multi-line message."""

PROMPT = ">>> "
CONTINUATION = "... "
FENCE = '"""'


def run_repl(conversation, *, load_profile) -> None:
    """Read lines until /exit or Ctrl-D; questions go to the model, slash commands to handlers."""
    _enable_history()
    info = conversation.loaded.info
    err.print(
        f"Chatting with {render.terminal_safe(info.model_id)}, trimming profile "
        f"'{render.terminal_safe(conversation.profile.name)}'. /help lists commands.",
        markup=False,
    )
    while True:
        try:
            line = _read_message()
        except EOFError:
            out.file.write("\n")
            return
        except KeyboardInterrupt:
            out.file.write("^C\n")
            err.print("(Ctrl-D or /exit leaves)", markup=False)
            continue
        if not line:
            continue
        if line.startswith("/"):
            if _command(conversation, line, load_profile) == "exit":
                return
            continue
        _answer(conversation, line)


def _read_message() -> str:
    """One message: a line, lines joined by a trailing backslash, or a block between two \"\"\" lines."""
    line = input(PROMPT)
    if line.strip() == FENCE:
        lines = []
        while (more := input(CONTINUATION)).strip() != FENCE:
            lines.append(more)
        return "\n".join(lines).strip()
    lines = [line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input(CONTINUATION))
    return "\n".join(lines).strip()


def _answer(conversation, prompt: str) -> None:
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:

        def show(text: str) -> None:
            out.file.write(render.model_text(text))  # a model's bytes must not drive the terminal
            out.file.flush()

        result = conversation.ask(prompt, on_text=show, should_stop=lambda: bool(interrupted))
    except TokentrimError as e:
        say_error(str(e), e.hint)
        return
    finally:
        signal.signal(signal.SIGINT, previous)
    out.file.write("\n")
    for note in result.notes:
        err.print(f"Note: {render.terminal_safe(note)}", markup=False)
    note = {"interrupted": " | stopped by Ctrl-C", "length": ""}.get(result.finish_reason, "")
    err.print(render.generation_summary(result) + note, markup=False)


def _command(conversation, line: str, load_profile) -> str | None:
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    try:
        if name in ("/exit", "/quit"):
            return "exit"
        if name == "/help":
            err.print(HELP, markup=False)
        elif name == "/image":
            if not argument:
                err.print("Usage: /image PATH|URL", markup=False)
                return None
            try:
                image = conversation.add_image(argument)
            except KeyboardInterrupt:  # a slow download: cancel the command, keep the session
                err.print("Cancelled: no image attached.", markup=False)
                return None
            err.print(f"Attached {render.terminal_safe(image.source)} ({image.size[0]}x{image.size[1]}) to your next message.", markup=False)
        elif name == "/clear":
            conversation.clear()
            err.print("Conversation cleared.", markup=False)
        elif name == "/profile":
            if not argument:
                err.print(f"Current trimming profile: {conversation.profile.name}. Usage: /profile NAME", markup=False)
                return None
            conversation.switch_profile(load_profile(argument))  # checked against the model first
            profile = conversation.profile
            err.print(f"Trimming profile: {render.terminal_safe(profile.name)} ({profile.method}).", markup=False)
        elif name == "/stats":
            err.print(_stats(conversation), markup=False)
        elif name == "/set":
            key, equals, value = argument.partition("=")
            if not equals:
                err.print("Usage: /set key=value (max_new_tokens, temperature, top_p, seed)", markup=False)
                return None
            conversation.set(key.strip(), value.strip())
            err.print(f"{key.strip()} = {getattr(conversation.settings, key.strip())}", markup=False)
        elif name == "/save":
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = conversation.save(argument or f"tokentrim-chat-{stamp}.json")
            err.print(f"Saved {render.terminal_safe(path)}", markup=False)
        elif name == "/load":
            if not argument:
                err.print("Usage: /load FILE (a chat saved with /save)", markup=False)
                return None
            conversation.restore(argument)
            err.print(f"Loaded {len(conversation.turns)} turns from {render.terminal_safe(argument)}.", markup=False)
        else:
            err.print(f"Unknown command {render.terminal_safe(name)}. /help lists commands.", markup=False)
    except TokentrimError as e:
        say_error(str(e), e.hint)  # a bad /image or /profile keeps the session
    return None


def _stats(conversation) -> str:
    result = conversation.last
    if result is None:
        return "No answer yet."
    visual = result.visual_tokens
    return "\n".join(
        [
            render.visual_accounting_line(result),
            f"visual tokens per layer (prefill): {visual.per_layer}",
            f"visual tokens: input budget {visual.input}, layer-averaged {visual.layer_averaged:.1f}",
            f"KV entries per layer: {result.kv_tokens_per_layer} ({result.kv_bytes / 2**20:.2f} MiB)",
            f"time to first token: {result.timing.ttft_s:.3f} s, decode: {result.timing.decode_tokens_per_s:.1f} tokens/s,"
            f" {result.new_tokens} tokens ({result.finish_reason})",
        ]
    )


def _enable_history() -> None:
    try:
        import readline
    except ImportError:  # not on every platform; the REPL works without history
        return
    path = Path(os.environ.get("TOKENTRIM_HISTORY", Path.home() / ".cache" / "tokentrim" / "history"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
        import atexit

        atexit.register(readline.write_history_file, path)
    except OSError:
        pass
