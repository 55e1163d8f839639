"""Bad and good image files made on the fly."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def good_png(path, size=(40, 30), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path)
    return path


def truncated_jpeg(path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path, side=20_000):
    """A valid PNG header claiming side x side pixels (400 M): Pillow must refuse it before decoding."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")
    path.write_bytes(data)
    return path
