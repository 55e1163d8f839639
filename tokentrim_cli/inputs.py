"""Images and prompts: open and validate images loudly, read JSONL data files strictly, build prompts.

Every read is bounded: image files and downloads are capped in bytes, a download has one deadline
for the whole transfer (not only per read), only regular files are opened (a FIFO or /dev/zero
would hang or fill memory), JSONL lines are capped in length, and pictures with more pixels than
a decompression bomb or an extreme aspect ratio (which the processor would upscale into gigabytes)
are refused before they are decoded.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, UsageError

URL_TIMEOUT_S = 20.0  # per connect / read
DOWNLOAD_DEADLINE_S = 60.0  # the whole download, however slowly the server trickles
MAX_IMAGE_BYTES = 50 * 1024 * 1024  # a file or a download
MAX_DOWNLOAD_BYTES = MAX_IMAGE_BYTES
MAX_IMAGE_PIXELS = 64_000_000  # beyond this a file is treated as a decompression bomb
MAX_ASPECT_RATIO = 20.0  # wider than 20:1 (or taller) is refused: resizing would blow it up
MAX_JSONL_LINE_BYTES = 1024 * 1024
URL_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass
class LoadedImage:
    source: str  # the path or URL as given
    image: object  # PIL.Image.Image, RGB, EXIF orientation applied

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def url_scheme(source: str) -> str | None:
    """The lower-cased scheme of `source` if it is written as a URL (`scheme://...`), else None."""
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else None


def is_url(source: str) -> bool:
    return url_scheme(source) in URL_SCHEMES


def local_path(source: str) -> str:
    """The file path `source` names: itself, or the path of a `file://` URL. UsageError for a URL
    scheme tokentrim does not fetch (ftp://, s3://, ...)."""
    scheme = url_scheme(source)
    if scheme is None:
        return source
    if scheme == "file":
        parsed = urllib.parse.urlsplit(source)
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"{source}: file:// URLs must name a local file (file:///path)")
        return urllib.request.url2pathname(parsed.path)
    raise UsageError(f"{source}: unsupported URL scheme '{scheme}' (images are paths, file://, http:// or https://)")


def check_image_paths(sources: list[str]) -> list[str]:
    """Names of local image paths that do not exist (a usage error, caught before any model loads).
    Raises UsageError for unsupported URL schemes; http(s) URLs are not checked here."""
    return [s for s in sources if not is_url(s) and not Path(local_path(s)).exists()]


def load_image(source: str) -> LoadedImage:
    """Open an image fully (truncation surfaces now), apply EXIF orientation, convert to RGB."""
    return LoadedImage(source=source, image=decode_image(read_image_bytes(source), source))


def read_image_bytes(source: str) -> bytes:
    data = _fetch(source) if is_url(source) else _read(local_path(source), source)
    if not data:
        raise InputError(f"{source}: empty file (0 bytes)")
    return data


def decode_image(data: bytes, source: str):
    """Decode image bytes into an RGB PIL image, refusing bombs and extreme aspect ratios first."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size  # from the header: nothing decoded yet
                if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
                    raise InputError(
                        f"{source}: refused: {width}x{height} has an aspect ratio beyond {MAX_ASPECT_RATIO:g}:1 "
                        "(resizing it for the model would take gigabytes)"
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{source}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise InputError(f"{source}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{source}: corrupt or truncated image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return image


def open_regular(path: str, source: str | None = None):
    """A binary file object for `path` if it is a regular file; InputError otherwise. Opened
    non-blocking and checked before any read: opening a FIFO for reading would wait for a writer,
    and /dev/zero never ends."""
    source = source or path
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{source}: a directory") from None
    except OSError as e:
        raise InputError(f"{source}: cannot read ({e.strerror or e})") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, pipe or socket)"
        raise InputError(f"{source}: {kind}")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def _read(path: str, source: str | None = None) -> bytes:
    """The bytes of a regular file, at most MAX_IMAGE_BYTES; anything else is an InputError."""
    source = source or path
    with open_regular(path, source) as handle:
        try:
            data = handle.read(MAX_IMAGE_BYTES + 1)
        except OSError as e:
            raise InputError(f"{source}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"{source}: larger than the {MAX_IMAGE_BYTES // 2**20} MiB image size cap")
    return data


# ---- downloads ----------------------------------------------------------------------------------


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only: urllib would also follow one to ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise urllib.error.URLError(f"refused a redirect to a {scheme or 'relative'}:// URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


def _download(url: str, deadline: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "tokentrim"})
    with _OPENER.open(request, timeout=URL_TIMEOUT_S) as response:
        chunks, total = [], 0
        while True:
            # read1: returns what one receive brings, so the deadline is checked however slow
            # the server is (read(n) would wait for all n bytes).
            chunk = response.read1(1 << 16)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > MAX_DOWNLOAD_BYTES:
                raise InputError(f"{url}: larger than the {MAX_DOWNLOAD_BYTES // 2**20} MiB download cap")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the download took longer than {DOWNLOAD_DEADLINE_S:g} s")
            chunks.append(chunk)


def _fetch(url: str) -> bytes:
    """Download `url` within DOWNLOAD_DEADLINE_S in all. The transfer runs in a helper thread so that
    a server that stalls while sending headers cannot hold the command past the deadline either,
    and Ctrl-C reaches the main thread at once."""
    outcome: dict = {}
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S

    def work() -> None:
        try:
            outcome["data"] = _download(url, deadline)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name="tokentrim-download", daemon=True)
    worker.start()
    worker.join(DOWNLOAD_DEADLINE_S + 1.0)
    if worker.is_alive():
        raise InputError(f"{url}: cannot download (no complete answer within {DOWNLOAD_DEADLINE_S:g} s)")
    error = outcome.get("error")
    if error is None:
        return outcome["data"]
    if isinstance(error, InputError):
        raise error
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, http.client.HTTPException):
        reason = f"the server does not speak HTTP ({type(error).__name__})"
    else:
        reason = getattr(error, "reason", None) or error
    raise InputError(f"{url}: cannot download ({reason})")


# ---- prompts ------------------------------------------------------------------------------------


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


# ---- data files ---------------------------------------------------------------------------------


@dataclass
class ImageRef:
    """An image of a data file, checked when the file is read and decoded again when it is used, so
    that a data set never holds every decoded picture in memory at once."""

    source: str  # as resolved (relative paths against the data file's folder)
    where: str  # "qa.jsonl: line 3", for errors
    data: bytes | None = None  # a downloaded image's bytes (local files are read again)

    def load(self) -> LoadedImage:
        try:
            data = self.data if self.data is not None else read_image_bytes(self.source)
        except InputError as e:
            raise InputError(f"{self.where}: {e}") from None
        return LoadedImage(self.source, decode_image(data, f"{self.where}: {self.source}"))


def jsonl_lines(source: str, text: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSONL file: UTF-8 with or without a byte-order mark, lines split on
    \\n only (U+2028 inside a JSON string is not a line break), each line at most
    MAX_JSONL_LINE_BYTES. Raises InputError naming the file (and line)."""
    if text is not None:
        yield from enumerate(text.split("\n"), start=1)
        return
    with open_regular(source) as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_JSONL_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_JSONL_LINE_BYTES and not raw.endswith(b"\n"):
                raise InputError(f"{source}: line {number}: longer than {MAX_JSONL_LINE_BYTES // 2**20} MiB")
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputError(f"{source}: line {number}: not UTF-8 ({e.reason})") from None


def parse_jsonl_line(source: str, number: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: line {number}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(f"{source}: line {number}: JSON nested too deeply") from None


def read_image_records(
    source: str, *, valid: Callable[[object], bool], expected: str, text: str | None = None, base=None,
    limit: int | None = None, image_optional: bool = False,
) -> tuple[list[tuple[dict, ImageRef | None]], str]:
    """The (record, image) pairs of a JSONL file whose lines carry an "image" (path, file:// or
    http(s) URL; relative paths resolve against the file's folder), and a sha256 over the text and
    every image's bytes.

    Every image is read and decoded once here (one at a time), so a missing, truncated or
    oversized picture stops the command before any work, with its line number; it is decoded
    again when used. With `image_optional`, a line without "image" is a text-only sample (None).
    `valid(record)` checks a parsed line; a line that fails gets `{source}: line N: expected {expected}`.
    `text` and `base` replace reading `source` (for data shipped inside the package).
    """
    base = Path(source).parent if base is None else base
    digest = hashlib.sha256()
    pairs: list[tuple[dict, ImageRef | None]] = []
    for number, line in jsonl_lines(source, text):
        digest.update(line.encode() + b"\n")
        if not line.strip():
            continue
        record = parse_jsonl_line(source, number, line)
        if not isinstance(record, dict):
            raise InputError(f"{source}: line {number}: expected {expected}")
        image_source = record.get("image")
        if image_source is None and image_optional:
            ref = None
        elif not isinstance(image_source, str) or not valid(record):
            raise InputError(f"{source}: line {number}: expected {expected}")
        elif not image_source.strip():
            hint = " (leave \"image\" out for a text-only sample)" if image_optional else ""
            raise InputError(f"{source}: line {number}: \"image\" is empty{hint}")
        else:
            ref = _image_ref(image_source, base, f"{source}: line {number}")
            try:
                data = ref.data if ref.data is not None else read_image_bytes(ref.source)
            except InputError as e:
                raise InputError(f"{ref.where}: {e}") from None
            decode_image(data, f"{ref.where}: {ref.source}")  # checked now, decoded again when used
            digest.update(hashlib.sha256(data).digest())
        if ref is None and not valid(record):
            raise InputError(f"{source}: line {number}: expected {expected}")
        pairs.append((record, ref))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise InputError(f"{source}: no samples")
    return pairs, digest.hexdigest()


def _image_ref(image_source: str, base, where: str) -> ImageRef:
    try:
        if is_url(image_source):
            return ImageRef(image_source, where, data=_fetch(image_source))
        path = local_path(image_source)
    except (InputError, UsageError) as e:
        raise InputError(f"{where}: {e}") from None
    if not Path(path).is_absolute():
        path = str(Path(base) / path)
    if not Path(path).exists():
        raise InputError(f"{where}: {path}: no such file")
    return ImageRef(path, where)
