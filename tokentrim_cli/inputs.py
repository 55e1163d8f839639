"""Images and prompts: open and validate images loudly, build chat prompts."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

URL_TIMEOUT_S = 20.0
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 64_000_000  # beyond this a file is treated as a decompression bomb


@dataclass
class LoadedImage:
    source: str  # the path or URL as given
    image: object  # PIL.Image.Image, RGB, EXIF orientation applied

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def check_image_paths(sources: list[str]) -> list[str]:
    """Names of local image paths that do not exist (a usage error, caught before any model loads)."""
    return [s for s in sources if not is_url(s) and not Path(s).is_file()]


def load_image(source: str) -> LoadedImage:
    """Open an image fully (truncation surfaces now), apply EXIF orientation, convert to RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    data = _fetch(source) if is_url(source) else _read(source)
    if not data:
        raise InputError(f"{source}: empty file (0 bytes)")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{source}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{source}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{source}: corrupt or truncated image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return LoadedImage(source=source, image=image)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "tokentrim"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"{url}: cannot download ({reason})") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise InputError(f"{url}: larger than the {MAX_DOWNLOAD_BYTES // (1024 * 1024)} MiB download cap")
    return data


def chat_messages(prompt: str, *, n_images: int, system: str | None = None) -> list[dict]:
    """Chat-template messages: the images first, then the text, as llava-hf's templates expect."""
    messages = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    messages.append({"role": "user", "content": content})
    return messages


def build_prompt(processor, messages: list[dict]) -> str:
    """The prompt text, from the processor's chat template when the checkpoint has one."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    # LLaVA-1.5's conversation format for checkpoints without a template.
    parts = []
    for message in messages:
        images = "".join("<image>\n" for part in message["content"] if part["type"] == "image")
        text = "".join(part["text"] for part in message["content"] if part["type"] == "text")
        if message["role"] == "system":
            parts.append(text)
        else:
            parts.append(f"{message['role'].upper()}: {images}{text}")
    return " ".join(parts) + " ASSISTANT:"


def read_image_records(
    source: str, *, valid: Callable[[object], bool], expected: str, text: str | None = None, base=None,
    limit: int | None = None,
) -> tuple[list[tuple[dict, LoadedImage]], str]:
    """The (record, image) pairs of a JSONL file whose lines carry an "image" (path or URL; relative
    paths resolve against the file's folder), and a sha256 over the text and every image's pixels.

    `valid(record)` checks a parsed line; a line that fails gets `{source}: line N: expected {expected}`.
    `text` and `base` replace reading `source` (for data shipped inside the package).
    Raises InputError naming the file (and the line) for every problem, and for an empty file.
    """
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{source}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{source}: cannot read ({e})") from None
        base = Path(source).parent
    digest = hashlib.sha256(text.encode())
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}: line {number}: not valid JSON ({e.msg})") from None
        if not (isinstance(record, dict) and isinstance(record.get("image"), str) and valid(record)):
            raise InputError(f"{source}: line {number}: expected {expected}")
        image_source = record["image"]
        if not is_url(image_source) and not Path(image_source).is_absolute():
            image_source = str(base / image_source)
        image = load_image(image_source)
        digest.update(image.image.tobytes())
        pairs.append((record, image))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise InputError(f"{source}: no samples")
    return pairs, digest.hexdigest()