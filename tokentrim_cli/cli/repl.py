"""The interactive side of `tokentrim chat`: a REPL with slash commands, streamed answers, Ctrl-C."""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

from ..errors import TokentrimError
from . import err, out

HELP = """Commands:
  /image PATH|URL   attach an image to your next message (several allowed)
  /clear            forget the conversation and any pending images
  /profile NAME     switch the trimming profile (applies from the next answer)
  /stats            last answer: visual tokens per layer, KV entries, time to first token, tokens/s
  /set key=value    max_new_tokens, temperature, top_p, seed
  /save [FILE]      write settings, profile and history as JSON
  /help             this list
  /exit             leave (Ctrl-D too). Ctrl-C stops the current answer and keeps the session."""

PROMPT = ">>> "
_CONTROL = {c: "\ufffd" for c in range(32) if chr(c) not in "\n\t"} | {127: "\ufffd"}


def run_repl(conversation, *, load_profile) -> None:
    """Read lines until /exit or Ctrl-D; questions go to the model, slash commands to handlers."""
    _enable_history()
    info = conversation.loaded.info
    err.print(f"Chatting with {info.model_id}, trimming profile '{conversation.profile.name}'. /help lists commands.", markup=False)
    while True:
        try:
            line = input(PROMPT).strip()
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


def _answer(conversation, prompt: str) -> None:
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:

        def show(text: str) -> None:
            out.file.write(text.translate(_CONTROL))  # a model's bytes must not drive the terminal
            out.file.flush()

        result = conversation.ask(prompt, on_text=show, should_stop=lambda: bool(interrupted))
    except TokentrimError as e:
        err.print(f"Error: {e}", markup=False)
        return
    finally:
        signal.signal(signal.SIGINT, previous)
    out.file.write("\n")
    from .. import render

    note = {"interrupted": " | stopped by Ctrl-C", "length": ""}.get(result.finish_reason, "")
    err.print(render.generation_summary(result) + note, markup=False)


def _command(conversation, line: str, load_profile) -> str | None:
    from .. import render

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
            image = conversation.add_image(argument)
            err.print(f"Attached {image.source} ({image.size[0]}x{image.size[1]}) to your next message.", markup=False)
        elif name == "/clear":
            conversation.clear()
            err.print("Conversation cleared.", markup=False)
        elif name == "/profile":
            if not argument:
                err.print(f"Current trimming profile: {conversation.profile.name}. Usage: /profile NAME", markup=False)
                return None
            conversation.profile = load_profile(argument)
            err.print(f"Trimming profile: {conversation.profile.name} ({conversation.profile.method}).", markup=False)
        elif name == "/stats":
            err.print(_stats(conversation, render), markup=False)
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
            err.print(f"Saved {path}", markup=False)
        else:
            err.print(f"Unknown command {name}. /help lists commands.", markup=False)
    except TokentrimError as e:
        err.print(f"Error: {e}", markup=False)  # a bad /image or /profile keeps the session
    return None


def _stats(conversation, render) -> str:
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
