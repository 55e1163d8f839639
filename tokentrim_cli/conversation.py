"""A multi-turn chat over images: history, pending images, the trimming profile, the last result.

Every turn renders the whole conversation with the checkpoint's chat template and runs a fresh
prefill over it, then generates. So a turn answers exactly what stock transformers answers for
the same messages (with the `baseline` profile), an image added mid-conversation simply joins the
next user message, and switching the trimming profile needs no cache surgery. What trimming does to
earlier images in later turns: they are trimmed again, every turn, by the current profile, and
text-guided methods (FastV, ST3, MustDrop) rank their tokens by the attention of the *current*
prompt. Nothing from an earlier turn's trimming carries over.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, UsageError
from .files import write_text_atomic
from .generation import GenerationResult, GenerationSettings, context_length, generate_messages, prepare_messages
from .inputs import LoadedImage, load_image
from .model import Loaded
from .methods.base import MAX_SEED
from .profiles import Profile, check_fits

SETTABLE = {"max_new_tokens": int, "temperature": float, "top_p": float, "seed": int}


@dataclass
class Turn:
    prompt: str
    images: list[str]
    answer: str
    finish_reason: str


@dataclass
class Conversation:
    loaded: Loaded
    profile: Profile
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)
    pending_images: list[LoadedImage] = field(default_factory=list)
    images: list[LoadedImage] = field(default_factory=list)  # every image so far, in order
    last: GenerationResult | None = None

    def add_image(self, source: str) -> LoadedImage:
        """Attach an image (path or URL) to the next question; raises InputError on a bad image."""
        image = load_image(source)
        self.pending_images.append(image)
        return image

    def ask(self, prompt: str, *, on_text=None, should_stop=None) -> GenerationResult:
        """Answer `prompt` in the context of every earlier turn; the turn is kept even if stopped early.

        When the conversation and the answer would not fit the model's context, the oldest turns
        (and their images) are dropped first, and the result's notes say so."""
        new_images = self.pending_images
        notes = self._fit_context(prompt, new_images)
        messages = self._messages() + [_user(prompt, len(new_images))]
        result = generate_messages(
            self.loaded, self.profile, messages=messages, images=self.images + new_images,
            settings=self.settings, on_text=on_text, should_stop=should_stop,
        )  # fmt: skip
        self.images += new_images
        self.pending_images = []
        self.turns.append(Turn(prompt, [i.source for i in new_images], result.text, result.finish_reason))
        result.notes = notes + result.notes
        self.last = result
        return result

    def prompt_tokens(self, prompt: str, new_images: list[LoadedImage]) -> int:
        """Tokens the next prefill would take (images expanded), before anything is generated."""
        messages = self._messages() + [_user(prompt, len(new_images))]
        return int(prepare_messages(self.loaded, self.images + new_images, messages)["input_ids"].shape[1])

    def _fit_context(self, prompt: str, new_images: list[LoadedImage]) -> list[str]:
        context = context_length(self.loaded)
        # Room kept for the answer: what was asked, but never more than a quarter of the context
        # (a huge max_new_tokens is capped when generating instead of emptying the history).
        budget = context - min(self.settings.max_new_tokens, context // 4)
        used = self.prompt_tokens(prompt, new_images)
        dropped_turns = dropped_images = 0
        while used > budget and self.turns:
            turn = self.turns.pop(0)
            self.images = self.images[len(turn.images) :]
            dropped_turns += 1
            dropped_images += len(turn.images)
            used = self.prompt_tokens(prompt, new_images)
        notes = []
        if dropped_turns:
            images = f" and {dropped_images} image{'s' * (dropped_images != 1)}" if dropped_images else ""
            notes.append(
                f"dropped the {dropped_turns} oldest turn{'s' * (dropped_turns != 1)}{images} to fit the model's "
                f"context of {context} tokens (/clear starts afresh)"
            )
        elif used > 0.8 * budget:
            notes.append(
                f"the conversation takes {used} of the model's {context} positions; the oldest turns will be "
                "dropped when it is full (/clear starts afresh)"
            )
        return notes

    def switch_profile(self, profile: Profile) -> None:
        """Use `profile` from the next answer on, once it is known to fit this model (else ProfileError,
        and the current profile stays)."""
        info = self.loaded.info
        check_fits(profile, model_id=info.model_id, model_type=info.model_type, num_layers=info.num_layers)
        self.profile = profile

    def restore(self, path: str | Path) -> None:
        """Continue a conversation written by save(): its system prompt, settings and turns, with the
        pictures read again from their sources. InputError when the file or a picture is unusable;
        the current conversation stays as it was then."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            turns = [Turn(t["prompt"], list(t["images"]), t["answer"], t.get("finish_reason", "stop")) for t in data["history"]]
            settings = {k: v for k, v in data.get("settings", {}).items() if k in SETTABLE and v is not None}
            system = data.get("system")
            if not all(isinstance(t.prompt, str) and isinstance(t.answer, str) for t in turns):
                raise TypeError("prompts and answers must be strings")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, RecursionError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a chat saved by /save ({type(e).__name__}: {e})") from None
        images = [load_image(source) for turn in turns for source in turn.images]
        self.turns, self.images, self.pending_images, self.last = turns, images, [], None
        self.system = system
        for key, value in settings.items():
            self.set(key, str(value))

    def clear(self) -> None:
        self.turns, self.pending_images, self.images, self.last = [], [], [], None

    def set(self, key: str, value: str) -> None:
        """`/set key=value` for the generation settings; raises UsageError naming the settable keys."""
        if key not in SETTABLE:
            raise UsageError(f"unknown setting '{key}'; settable: {', '.join(SETTABLE)}")
        try:
            parsed = SETTABLE[key](value)
        except ValueError:
            raise UsageError(f"{key} takes a {SETTABLE[key].__name__}, got '{value}'") from None
        if key == "max_new_tokens" and parsed < 1 or key in ("temperature", "top_p") and parsed < 0:
            raise UsageError(f"{key} must be positive, got {value}")
        if key == "seed" and not 0 <= parsed <= MAX_SEED:
            raise UsageError(f"seed must be in [0, {MAX_SEED}], got {value}")
        self.settings = dataclasses.replace(self.settings, **{key: parsed})

    def _messages(self) -> list[dict]:
        messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        for turn in self.turns:
            messages.append(_user(turn.prompt, len(turn.images)))
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
        return messages

    def to_dict(self) -> dict:
        return {
            "model": self.loaded.info.to_dict(),
            "profile": {"name": self.profile.name, "source": self.profile.source, "sha256": self.profile.sha256},
            "settings": dataclasses.asdict(self.settings),
            "system": self.system,
            "history": [dataclasses.asdict(turn) for turn in self.turns],
            "pending_images": [i.source for i in self.pending_images],
        }

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON, atomically (a temporary file, then a rename)."""
        try:
            return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise InputError(f"{path}: cannot write ({e.strerror})") from None


def _user(prompt: str, n_images: int) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]}
