"""Images fail loudly with one line naming the file; prompts follow the chat template."""

from __future__ import annotations

import pytest
from images import bomb_png, good_png, truncated_jpeg
from PIL import Image

from tokentrim_cli.errors import InputError
from tokentrim_cli.inputs import build_prompt, chat_messages, check_image_paths, load_image


def test_good_image_is_rgb_and_exif_rotated(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("L", (40, 20), 128).save(path, exif=exif)
    loaded = load_image(str(path))
    assert loaded.image.mode == "RGB" and loaded.size == (20, 40)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not an image at all"), "not an image file"),
        (truncated_jpeg, "corrupt or truncated"),
        (bomb_png, "decompression bomb"),
    ],
)
def test_bad_images_raise_input_error(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(InputError) as info:
        load_image(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
    assert info.value.exit_code == 3


def test_missing_paths_are_reported_but_urls_are_not_checked(tmp_path):
    good = str(good_png(tmp_path / "a.png"))
    assert check_image_paths([good, "https://example.invalid/x.png", str(tmp_path / "nope.png")]) == [
        str(tmp_path / "nope.png")
    ]


def test_unreachable_url_is_an_input_error():
    with pytest.raises(InputError, match=r"^http://127\.0\.0\.1:9/x\.png: cannot download"):
        load_image("http://127.0.0.1:9/x.png")


def test_prompt_uses_the_chat_template(tiny):
    _, processor = tiny
    messages = chat_messages("What is it?", n_images=2, system="Be brief.")
    assert build_prompt(processor, messages) == "Be brief. USER: <image>\n<image>\nWhat is it? ASSISTANT:"


def test_prompt_without_a_template_uses_llava_format():
    class NoTemplate:
        chat_template = None

    assert build_prompt(NoTemplate(), chat_messages("Hi?", n_images=1)) == "USER: <image>\nHi? ASSISTANT:"

