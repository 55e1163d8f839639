"""One request through a (possibly trimmed) model: inputs in, tokens out, with the trace and timings.

`run()` is the only place in tokentrim that builds the trimming engine and calls transformers'
`generate()`: chat (`generate`, `generate_messages`), eval (`answer_batch`), calibrate (the first
token's logits) and profile (timed runs, and stock transformers for comparison) are its clients.
It returns a `BatchResult`: the answers, what the engine did per sample and per layer (`Trace`) and
the timings. The library never prints: text pieces go to an optional `on_text` callback as they are
generated.

    from tokentrim_cli import load_llava, load_profile, generate
    loaded = load_llava("builtin:scenes")
    result = generate(loaded, load_profile("fastv"), images=[...], prompt="What is in the picture?")
    result.text, result.visual_tokens.per_layer, result.kv_tokens_per_layer, result.timing.ttft_s
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .inputs import LoadedImage, build_prompt, chat_messages
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
class Trace:
    """What the engine did to one batch, per sample ([sample]) and per decoder layer ([layer])."""

    visual_before: list[int]  # [sample] visual tokens the processor made
    visual_input: list[int]  # [sample] visual tokens entering the language model (input budget)
    visual_per_layer: list[list[int]]  # [sample][layer] visual tokens entering each layer in prefill
    tokens_per_layer: list[list[int]]  # [sample][layer] every real token entering each layer
    kv_after_prefill: list[int]  # [layer] stored entries once the prefill ended
    kv_end: list[int]  # [layer] stored entries at the end of the answer
    kv_bytes_end: int  # measured from the cache tensors

    @property
    def layer_averaged(self) -> list[float]:
        """[sample] visual tokens averaged over layers (layer-averaged budget, methods.md §0.2)."""
        return [sum(row) / len(row) for row in self.visual_per_layer]

    @property
    def layer_averaged_after_pruning(self) -> list[float]:
        """[sample] the same average with each layer counted after its own pruning (what MustDrop's
        and SparseVLM's code print): a layer holds the tokens that enter the next one."""
        return [sum(row[1:] + row[-1:]) / len(row) for row in self.visual_per_layer]


@dataclass
class Timings:
    ttft_s: float  # from `started` (the request, preprocessing included when the caller says so) to the first token
    decode_tokens_per_s: float  # every sequence of the batch together, after the first token
    total_s: float
    overhead_s: dict | None = None  # engine time scoring and gathering (measure_overhead=True)


@dataclass
class BatchResult:
    texts: list[str]
    new_ids: list[list[int]]
    finish_reasons: list[str]  # "stop", "length" or "interrupted"
    prompt_tokens: int  # the batch's (padded) prompt length
    trace: Trace
    timings: Timings
    first_logits: object = None  # (B, V) fp32 logits of the first generated token, when asked for
    notes: list[str] = field(default_factory=list)


# ---- inputs ---------------------------------------------------------------------------------------


def prepare_inputs(loaded: Loaded, images: list[LoadedImage], prompt: str, *, system: str | None = None) -> dict:
    """Processor outputs on the model's device, for one prompt built with the chat template."""
    return prepare_messages(loaded, images, chat_messages(prompt, n_images=len(images), system=system))


def prepare_messages(loaded: Loaded, images: list[LoadedImage], messages: list[dict]) -> dict:
    """Processor outputs on the model's device for chat-template messages (images in order)."""
    text = build_prompt(loaded.processor, messages)
    return _on_model(loaded.processor(images=[i.image for i in images] or None, text=[text], return_tensors="pt"), loaded.model)


def prepare_batch(loaded: Loaded, requests: list[tuple[list[LoadedImage], str]]) -> dict:
    """One left-padded batch of (images, prompt) requests (a decoder-only batch pads on the left)."""
    processor = loaded.processor
    texts = [build_prompt(processor, chat_messages(prompt, n_images=len(images))) for images, prompt in requests]
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        images = [i.image for images, _ in requests for i in images]
        return _on_model(processor(images=images or None, text=texts, padding=True, return_tensors="pt"), loaded.model)
    finally:
        tokenizer.padding_side = side


def _on_model(batch, model) -> dict:
    out = {}
    for key, value in batch.items():
        value = value.to(model.device)
        out[key] = value.to(model.dtype) if value.is_floating_point() else value
    return out


# ---- the one path -----------------------------------------------------------------------------------


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


def run(
    loaded: Loaded,
    profile: Profile | None,
    inputs: dict,
    settings: GenerationSettings = GenerationSettings(),
    *,
    on_text: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    first_logits: bool = False,
    measure_overhead: bool = False,
    started: float | None = None,
) -> BatchResult:
    """Generate for a prepared batch with `profile` applied (None: stock transformers, no engine).

    `on_text` streams the answer (batch 1 only); `should_stop` is polled after every token (Ctrl-C);
    `first_logits` keeps the first generated token's logits (calibration); `started` is when the
    request began (perf_counter), for a TTFT that includes preprocessing.
    """
    import torch
    from transformers import StoppingCriteriaList

    from .engine import PrefillTrace, Trimmer, kv_lengths, kv_nbytes

    started = time.perf_counter() if started is None else started
    model, tokenizer, device = loaded.model, loaded.processor.tokenizer, loaded.info.device
    if profile is not None:
        info = loaded.info
        check_fits(profile, model_id=info.model_id, model_type=info.model_type, num_layers=info.num_layers)
    batch, prompt_tokens = inputs["input_ids"].shape
    if on_text is not None and batch != 1:
        raise ValueError("streaming text (on_text) needs a batch of one")
    max_new_tokens, notes = fit_new_tokens(loaded, prompt_tokens, settings.max_new_tokens)
    clock = _TextClock(tokenizer, on_text, device) if on_text else _Clock(device)
    kwargs = dict(max_new_tokens=max_new_tokens, streamer=clock, pad_token_id=tokenizer.pad_token_id,
                  return_dict_in_generate=True, output_logits=first_logits)  # fmt: skip
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
    trimmer = Trimmer.from_profile(model, profile, measure_overhead=measure_overhead) if profile is not None else None
    with torch.inference_mode():
        _sync(device)
        if trimmer is None:
            out = model.generate(**inputs, **kwargs)
        else:
            with trimmer:
                out = model.generate(**inputs, **kwargs)
        _sync(device)
    finished = time.perf_counter()
    new_ids = out.sequences[:, prompt_tokens:].tolist()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    finish = ["stop" if ids and ids[-1] in eos_ids else "length" for ids in new_ids]
    if stop and stop.fired:
        finish = ["interrupted"] * batch
    cache = trimmer.last_cache if trimmer else out.past_key_values
    image_token = model.config.image_token_id
    visual_before = (inputs["input_ids"] == image_token).sum(1).tolist()
    if trimmer is not None:
        prefill: PrefillTrace = cache.meta.prefills[-1]
    else:
        real = inputs["attention_mask"].sum(1).tolist() if "attention_mask" in inputs else [prompt_tokens] * batch
        layers = loaded.info.num_layers
        prefill = PrefillTrace([[v] * layers for v in visual_before], [[t] * layers for t in real], visual_before,
                               [prompt_tokens] * layers)  # fmt: skip
    first = clock.first_at or finished
    new_counts = [len(ids) for ids in new_ids]
    decode_s = finished - first
    decoded = sum(max(0, n - 1) for n in new_counts)
    return BatchResult(
        texts=tokenizer.batch_decode(out.sequences[:, prompt_tokens:], skip_special_tokens=True),
        new_ids=new_ids,
        finish_reasons=finish,
        prompt_tokens=prompt_tokens,
        trace=Trace(
            visual_before=visual_before, visual_input=prefill.visual_input, visual_per_layer=prefill.visual_per_layer,
            tokens_per_layer=prefill.tokens_per_layer, kv_after_prefill=prefill.kv_after_prefill,
            kv_end=kv_lengths(cache), kv_bytes_end=kv_nbytes(cache),
        ),  # fmt: skip
        timings=Timings(
            ttft_s=first - started,
            decode_tokens_per_s=decoded / decode_s if decoded and decode_s > 0 else 0.0,
            total_s=finished - started,
            overhead_s=dict(trimmer.overhead_s) if trimmer and measure_overhead else None,
        ),
        first_logits=out.logits[0].float() if first_logits else None,
        notes=notes,
    )


def _sync(device: str) -> None:
    """Wait for queued GPU work on the model's device(s) (a device_map may list several)."""
    for one in str(device).split(","):
        if one.startswith("cuda"):
            import torch

            torch.cuda.synchronize(one)


class _Clock:
    """A streamer that only notes when the first generated token exists (device synchronised)."""

    def __init__(self, device: str) -> None:
        self.device, self.calls, self.first_at = device, 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call hands over the prompt
            _sync(self.device)
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


class _TextClock(_Clock):
    """Streams the answer to `on_text` token by token with an incremental decoder: each step
    decodes only a short window (the tokens since the last text it handed out, and a few before
    for context), so the cost per token stays constant however long the answer (re-decoding the
    whole answer every step would be quadratic). Half of a multi-byte character waits for its rest."""

    def __init__(self, tokenizer, on_text, device) -> None:
        super().__init__(device)
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.prefix = 0  # start of the decoding window
        self.read = 0  # tokens whose text has been handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def put(self, value) -> None:
        super().put(value)
        if self.calls == 1:  # the prompt
            return
        self.ids.extend(value.reshape(-1).tolist())
        seen = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if len(text) > len(seen) and not text.endswith("\ufffd"):
            self.on_text(text[len(seen) :])
            self.prefix, self.read = self.read, len(self.ids)

    def end(self) -> None:
        seen = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if len(text) > len(seen):
            self.on_text(text[len(seen) :])


class _StopWhen:
    """A stopping criterion that ends generation cleanly when `should_stop()` turns true (Ctrl-C)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop, self.fired = should_stop, False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.fired = self.fired or bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


# ---- clients: chat ---------------------------------------------------------------------------------


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
    """One chat answer: what `tokentrim chat` prints and `--json` writes."""

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
    info = loaded.info
    check_fits(profile, model_id=info.model_id, model_type=info.model_type, num_layers=info.num_layers)
    started = time.perf_counter()
    inputs = prepare_messages(loaded, images, messages)
    result = run(loaded, profile, inputs, settings, on_text=on_text, should_stop=should_stop, started=started)
    trace = result.trace
    return GenerationResult(
        text=result.texts[0],
        finish_reason=result.finish_reasons[0],
        prompt_tokens=result.prompt_tokens,
        new_tokens=len(result.new_ids[0]),
        visual_tokens=VisualAccounting(
            input=trace.visual_input[0], per_layer=trace.visual_per_layer[0],
            layer_averaged=trace.layer_averaged[0], before_trimming=trace.visual_before[0],
        ),  # fmt: skip
        kv_tokens_per_layer=trace.kv_end,
        kv_bytes=trace.kv_bytes_end,
        timing=Timing(
            load_s=info.load_s, ttft_s=result.timings.ttft_s,
            decode_tokens_per_s=result.timings.decode_tokens_per_s, total_s=result.timings.total_s,
        ),  # fmt: skip
        images=[{"source": i.source, "width": i.size[0], "height": i.size[1]} for i in images],
        notes=result.notes,
    )


# ---- clients: eval and calibration -----------------------------------------------------------------


def answer_batch(loaded: Loaded, profile: Profile, requests: list[tuple[list[LoadedImage], str]], *, max_new_tokens: int):
    """Greedy answers to several (images, prompt) requests in one left-padded batch, and the trace."""
    result = run(loaded, profile, prepare_batch(loaded, requests), GenerationSettings(max_new_tokens=max_new_tokens))
    return result.texts, result.trace


def first_token_logits(loaded: Loaded, profile: Profile | None, images: list[LoadedImage], prompt: str):
    """(V,) fp32 next-token logits at the end of the prompt (what calibration compares)."""
    inputs = prepare_inputs(loaded, images, prompt)
    return run(loaded, profile, inputs, GenerationSettings(max_new_tokens=1), first_logits=True).first_logits[0]
