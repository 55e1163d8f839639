"""One request through a trimmed model: prompt in, streamed text out, with the trace and timings.

`generate()` is what `tokentrim chat` runs and what Python users call; it never prints. Text pieces
go to an optional `on_text` callback as `generate()` of transformers produces them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .decoder import Trimmer
from .inputs import LoadedImage, build_prompt, chat_messages
from .metrics import layer_averaged_budget
from .model import Loaded
from .profiles import Profile, check_fits


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_new_tokens (for timing)


@dataclass
class VisualAccounting:
    input: int  # visual tokens entering the language model (input budget)
    per_layer: list[int]  # visual tokens entering each decoder layer during prefill
    layer_averaged: float  # mean of per_layer (layer-averaged budget)
    before_trimming: int  # visual tokens the processor produced


@dataclass
class Timing:
    load_s: float
    ttft_s: float  # from the request (preprocessing included) to the first generated token
    decode_tokens_per_s: float  # after the first token
    total_s: float


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop", "length", or "interrupted" (chat's Ctrl-C)
    prompt_tokens: int
    new_tokens: int
    visual_tokens: VisualAccounting
    kv_tokens_per_layer: list[int]
    kv_bytes: int
    timing: Timing
    images: list[dict] = field(default_factory=list)  # source, width, height
    notes: list[str] = field(default_factory=list)  # what the user should know (a capped length, ...)


class _Streamer:
    """A transformers streamer: decodes the growing answer and hands new text to `on_text`."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.emitted = ""
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        if self.on_text and len(text) > len(self.emitted):
            self.on_text(text[len(self.emitted) :])
        self.emitted = text

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.on_text and len(text) > len(self.emitted):
            self.on_text(text[len(self.emitted) :])
        self.emitted = text


def prepare_inputs(loaded: Loaded, images: list[LoadedImage], prompt: str, *, system: str | None = None) -> dict:
    """Processor outputs on the model's device, for one prompt built with the chat template."""
    return prepare_messages(loaded, images, chat_messages(prompt, n_images=len(images), system=system))


def prepare_messages(loaded: Loaded, images: list[LoadedImage], messages: list[dict]) -> dict:
    """Processor outputs on the model's device for chat-template messages (images in order)."""
    processor = loaded.processor
    text = build_prompt(processor, messages)
    batch = processor(images=[i.image for i in images] or None, text=[text], return_tensors="pt")
    return _on_model(batch, loaded.model)


def _on_model(batch, model) -> dict:
    out = {}
    for key, value in batch.items():
        value = value.to(model.device)
        out[key] = value.to(model.dtype) if value.is_floating_point() else value
    return out


def answer_batch(loaded: Loaded, profile: Profile, requests: list[tuple[list[LoadedImage], str]], *, max_new_tokens: int):
    """Greedy answers to several (images, prompt) requests in one left-padded batch, and the
    prefill trace (per sample). For evaluation: no streaming, no timing."""
    import torch

    processor, model = loaded.processor, loaded.model
    texts = [build_prompt(processor, chat_messages(prompt, n_images=len(images))) for images, prompt in requests]
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # a decoder-only batch pads on the left
    try:
        images = [i.image for images, _ in requests for i in images]
        batch = _on_model(processor(images=images or None, text=texts, padding=True, return_tensors="pt"), model)
    finally:
        tokenizer.padding_side = side
    trimmer = Trimmer(model, profile.build_method(), position_policy=profile.position_policy)
    with torch.inference_mode(), trimmer:
        sequences = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    answers = tokenizer.batch_decode(sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers, trimmer.last_cache.meta.prefills[-1]


def generate(
    loaded: Loaded,
    profile: Profile,
    *,
    images: list[LoadedImage],
    prompt: str,
    system: str | None = None,
    settings: GenerationSettings = GenerationSettings(),
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Answer `prompt` about `images` with `profile` applied; stream text to `on_text`."""
    messages = chat_messages(prompt, n_images=len(images), system=system)
    return generate_messages(loaded, profile, messages=messages, images=images, settings=settings, on_text=on_text)


class _StopWhen:
    """A stopping criterion that ends generation cleanly when `should_stop()` turns true (Ctrl-C)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop, self.fired = should_stop, False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.fired = self.fired or bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


def generate_messages(
    loaded: Loaded,
    profile: Profile,
    *,
    messages: list[dict],
    images: list[LoadedImage],
    settings: GenerationSettings = GenerationSettings(),
    on_text: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Answer the last user message of `messages` (chat-template format); images fill the image
    placeholders in order. `should_stop` is polled after every token."""
    import torch
    from transformers import StoppingCriteriaList

    info = loaded.info
    check_fits(profile, model_id=info.model_id, model_type=info.model_type, num_layers=info.num_layers)
    started = time.perf_counter()
    inputs = prepare_messages(loaded, images, messages)
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    streamer = _Streamer(tokenizer, on_text)
    max_new_tokens, notes = fit_new_tokens(loaded, inputs["input_ids"].shape[1], settings.max_new_tokens)
    kwargs = dict(max_new_tokens=max_new_tokens, streamer=streamer, pad_token_id=tokenizer.pad_token_id)
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if settings.ignore_eos:
        kwargs["min_new_tokens"] = max_new_tokens
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    stop = _StopWhen(should_stop) if should_stop else None
    if stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
    trimmer = Trimmer(model, profile.build_method(), position_policy=profile.position_policy)
    with torch.inference_mode(), trimmer:
        sequences = model.generate(**inputs, **kwargs)
    finished = time.perf_counter()
    result = _result(loaded, inputs, sequences, streamer, trimmer, images, started, finished)
    if stop and stop.fired:
        result.finish_reason = "interrupted"
    result.notes = notes
    return result


def context_length(loaded: Loaded) -> int:
    """The positions the decoder was trained for (its RoPE table): prompt and answer together."""
    text = loaded.model.config.text_config
    return int(getattr(text, "max_position_embeddings", None) or 4096)


def fit_new_tokens(loaded: Loaded, prompt_tokens: int, requested: int) -> tuple[int, list[str]]:
    """`requested` capped at the context that remains after the prompt, and a note if it was capped.
    A prompt that fills the context alone is an InputError."""
    from .errors import InputError

    context = context_length(loaded)
    room = context - prompt_tokens
    if room < 1:
        raise InputError(
            f"the prompt is {prompt_tokens} tokens, and the model's context holds {context}",
            hint="fewer or smaller images, a shorter prompt, or /clear in a chat",
        )
    if requested <= room:
        return requested, []
    return room, [f"--max-new-tokens {requested} capped at {room}: the prompt takes {prompt_tokens} of the model's {context} positions"]


def _result(loaded, inputs, sequences, streamer, trimmer, images, started, finished) -> GenerationResult:
    prompt_tokens = inputs["input_ids"].shape[1]
    new_ids = sequences[0, prompt_tokens:].tolist()
    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    finish = "stop" if new_ids and new_ids[-1] in eos_ids else "length"
    cache = trimmer.last_cache
    trace = cache.meta.prefills[-1]
    first = streamer.first_token_at or finished
    decode_s = finished - first
    image_token_id = loaded.model.config.image_token_id
    return GenerationResult(
        text=streamer.emitted,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        new_tokens=len(new_ids),
        visual_tokens=VisualAccounting(
            input=trace.visual_input[0],
            per_layer=trace.visual_per_layer[0],
            layer_averaged=layer_averaged_budget(trace.visual_per_layer[0]),
            before_trimming=int((inputs["input_ids"][0] == image_token_id).sum()),
        ),
        kv_tokens_per_layer=cache.lengths(),
        kv_bytes=cache.nbytes(),
        timing=Timing(
            load_s=loaded.info.load_s,
            ttft_s=first - started,
            decode_tokens_per_s=(len(new_ids) - 1) / decode_s if len(new_ids) > 1 and decode_s > 0 else 0.0,
            total_s=finished - started,
        ),
        images=[{"source": i.source, "width": i.size[0], "height": i.size[1]} for i in images],
    )
