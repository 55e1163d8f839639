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
from .generation import GenerationResult, GenerationSettings, generate_messages
from .inputs import LoadedImage, load_image
from .model import Loaded
from .profiles import Profile

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
        """Answer `prompt` in the context of every earlier turn; the turn is kept even if stopped early."""
        new_images = self.pending_images
        messages = self._messages() + [_user(prompt, len(new_images))]
        result = generate_messages(
            self.loaded, self.profile, messages=messages, images=self.images + new_images,
            settings=self.settings, on_text=on_text, should_stop=should_stop,
        )  # fmt: skip
        self.images += new_images
        self.pending_images = []
        self.turns.append(Turn(prompt, [i.source for i in new_images], result.text, result.finish_reason))
        self.last = result
        return result

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
