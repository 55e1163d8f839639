"""Tiny LLaVA-family models built in-process (no network), and inputs for them."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tokentrim_cli.model import build_random  # noqa: E402

torch.set_num_threads(int(os.environ.get("TOKENTRIM_TEST_THREADS", "2")))

PROMPTS = ["What is this?", "Describe the colours of both pictures in one long sentence, please."]


def image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def make_inputs(processor, samples: list[tuple[str, int]]) -> dict:
    """samples: (question, number of images) per batch row; rows get left padding."""
    texts, images = [], []
    for question, n_images in samples:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
        # Images depend on the sample, not its row, so a sample looks the same alone or in a batch.
        images += [image(40 + len(question) + 7 * k, 30 + 5 * k, seed=len(question) + k) for k in range(n_images)]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


def sharpened(model_and_processor):
    # Random weights give near-uniform logits, so greedy picks would hinge on float noise
    # (engine.md "Traps"); a sharper head makes "same tokens" a meaningful assertion.
    model, processor = model_and_processor
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model, processor


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Every test runs in an empty working directory with no user profiles, model or history, so
    nothing a user left in ./profiles, $TOKENTRIM_PROFILE_DIR or ~/.config changes a result."""
    home = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(home)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("TOKENTRIM_HISTORY", str(home / "history"))
    for name in ("TOKENTRIM_PROFILE_DIR", "TOKENTRIM_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny():
    return sharpened(build_random("tiny", seed=0))


@pytest.fixture(scope="session")
def tiny_next():
    return sharpened(build_random("tiny-next", seed=1))


@pytest.fixture(params=["tiny", "tiny_next"])
def any_tiny(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def fake_cpu(monkeypatch):
    """fake_cpu(machine="x86_64", avx512_bf16=True, ...): this process's CPU as torch's private
    feature checks report it (every feature not named is absent: AVX2 alone)."""
    import platform

    def fake(machine: str = "x86_64", **features: bool) -> None:
        monkeypatch.setattr(platform, "machine", lambda: machine)
        for feature in ("avx512", "avx512_bf16", "amx_tile", "amx_fp16"):
            monkeypatch.setattr(torch.cpu, f"_is_{feature}_supported", lambda on=features.get(feature, False): on)

    return fake
