"""The trimming engine: owns the language model's forward on one model instance (engine.md).

`Trimmer(model, method).install()` replaces `model.model.language_model.forward` on that instance
only (not the class) with a loop over the unchanged decoder layers that can drop tokens between
layers by gathering. `generate()` stays untouched: sampling, stopping, streaming and beam search
come for free. With the neutral setting (or the `none` method) the loop is stock transformers, bit
for bit: every layer whose token set nothing has changed gets the stock mask and RoPE tensors.

One forward is either a prefill (`_prefill`: the prompt, or a chunk of it) or a decode step
(`_decode`: one token per sample on a non-empty cache). What a forward needs from outside the
language model (the prompt's input ids, a vision stage's verdicts) arrives in one `ForwardContext`,
created by a pre-hook on the LLaVA model's forward and consumed by the language model's.

Index spaces (engine.md "Traps"): `token_index` is a token's column in the 2D attention mask
(padding included), used for causality; `rope_position` is the RoPE position its key is encoded
at (positions.py).
"""

from __future__ import annotations

import contextlib
import time
import types
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling

from ..errors import UnsupportedError
from ..methods.base import CacheState, DecodeStep, LiveState, Method, NoTrimming, QuerySpec, VisionInputs
from . import masks, positions
from .cache import Entries, PrefillTrace, PrunableCache
from .family import language_model_of, visual_token_ids
from .scoring import score_rows, score_rows_before
from .tokens import LiveTokens, pad_keep
from .vision import VisionRunner

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class VisionVerdict:
    """A vision stage's decision over every image slot of a batch, in placeholder order."""

    keep: Tensor  # (n_slots,) bool
    protected: Tensor  # (n_slots,) bool


@dataclass
class ForwardContext:
    """What one forward of the LLaVA model hands to its language model's forward."""

    input_ids: Tensor | None  # the prompt's ids: where the visual tokens are
    vision: VisionVerdict | None = None


class Trimmer:
    """Runs a trimming method inside one LLaVA-family model. Use as a context manager or install()."""

    def __init__(
        self, model, method: Method | None = None, *, position_policy: str = "keep", measure_overhead: bool = False
    ) -> None:
        if position_policy not in positions.POLICIES:
            raise ValueError(f"position_policy must be one of {positions.POLICIES}, got {position_policy!r}")
        self.model = model
        self.method = method or NoTrimming(NoTrimming.Config())
        self.position_policy = position_policy
        self.language_model = language_model_of(model)
        self.num_layers = len(self.language_model.layers)
        self.method.config.check_model(self.num_layers)
        self._visual_ids = visual_token_ids(model.config)
        self._decode_hooks = self.method.has_decode_hooks()
        self._context: ForwardContext | None = None
        # generate() encodes the images before the first forward (mm_encoder_outputs), so a vision
        # stage's verdict may come before the forward that uses it: it waits here until the next
        # prefill takes it.
        self._verdict: VisionVerdict | None = None
        self._handles: list = []
        self.last_cache: PrunableCache | None = None
        # Seconds spent scoring (attention rows) and gathering (dropping tokens, evicting entries),
        # measured with device synchronisation, so only when asked: the sync itself costs time.
        self.measure_overhead = measure_overhead
        self.overhead_s = {"scoring": 0.0, "gathering": 0.0}

    @classmethod
    def from_profile(cls, model, profile, *, measure_overhead: bool = False) -> Trimmer:
        """The engine for a trimming profile (profiles.Profile): its method and position policy."""
        return cls(model, profile.build_method(), position_policy=profile.position_policy, measure_overhead=measure_overhead)

    # ---- installation --------------------------------------------------------------------------

    def install(self) -> Trimmer:
        config = self.language_model.config
        if config._attn_implementation not in SUPPORTED_ATTENTION:
            raise UnsupportedError(
                f"attention implementation '{config._attn_implementation}' is not supported by the trimming engine",
                hint="use --attn-impl sdpa (the default) or eager",
            )
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
            raise UnsupportedError("models with sliding-window or linear-attention layers are not supported")
        if "forward" in vars(self.language_model):
            raise RuntimeError("a trimmer is already installed on this model")
        if self.method.has_vision_stage() and self.model.config.model_type != "llava":
            raise UnsupportedError(
                f"method '{self.method.name}' has a vision stage, supported on LLaVA-1.5-style models only",
                hint="LLaVA-NeXT and OneVision pack crops and newline tokens after the vision tower",
            )
        self._handles.append(self.model.model.register_forward_pre_hook(self._open_context, with_kwargs=True))
        self.language_model.forward = types.MethodType(_bound_forward(self), self.language_model)
        if self.method.has_vision_stage():
            self.model.model.get_image_features = self._vision_stage(self.model.model.get_image_features)
        return self

    def uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        vars(self.language_model).pop("forward", None)
        vars(self.model.model).pop("get_image_features", None)
        self._context, self._verdict = None, None

    def __enter__(self) -> Trimmer:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _open_context(self, module, args, kwargs) -> None:
        # LlavaModel passes only inputs_embeds to the language model: the ids come from here.
        self._context = ForwardContext(input_ids=kwargs.get("input_ids", args[0] if args else None))

    def _take_context(self) -> ForwardContext:
        context, self._context = self._context, None
        return context or ForwardContext(input_ids=None)

    def _take_verdict(self) -> VisionVerdict | None:
        verdict, self._verdict = self._verdict, None
        return verdict

    def _vision_stage(self, stock_get_image_features):
        """Wrap LlavaModel.get_image_features so the method's vision stage supplies the features."""

        def get_image_features(pixel_values, **kwargs):
            config = self.model.model.config

            def stock() -> list[Tensor]:
                return list(stock_get_image_features(pixel_values, **kwargs).pooler_output)

            runner = VisionRunner(
                self.model.model, pixel_values,
                feature_layer=_given_or(kwargs.get("vision_feature_layer"), config.vision_feature_layer),
                select_strategy=_given_or(kwargs.get("vision_feature_select_strategy"), config.vision_feature_select_strategy),
            )  # fmt: skip
            output = self.method.on_vision(VisionInputs(runner, stock))
            if output is None:
                return stock_get_image_features(pixel_values, **kwargs)
            protected = output.protected or [torch.zeros_like(k) for k in output.keep]
            # Placeholders are filled image after image, as masked_scatter does.
            self._verdict = VisionVerdict(keep=torch.cat(output.keep), protected=torch.cat(protected))
            return BaseModelOutputWithPooling(pooler_output=output.features)

        return get_image_features

    # ---- the forward -----------------------------------------------------------------------------

    def forward(
        self, inputs_embeds: Tensor, *, attention_mask: Tensor | None, position_ids: Tensor | None, past_key_values,
        use_cache: bool, **kwargs,
    ) -> BaseModelOutputWithPast:  # fmt: skip
        context = self._take_context()
        caller_cache = past_key_values
        cache = self._prunable(past_key_values)
        past, chunk = cache.seen_tokens, inputs_embeds.shape[1]
        if position_ids is None:  # the stock default
            position_ids = (torch.arange(chunk, device=inputs_embeds.device) + past).unsqueeze(0)
        # Stock builds its one mask before any layer runs, with a cache whenever it will use one.
        mask_cache = cache if caller_cache is not None or use_cache else None
        stock_mask = self._stock_mask(inputs_embeds, attention_mask, position_ids, mask_cache)
        cos, sin = self.language_model.rotary_emb(inputs_embeds, position_ids=position_ids)
        if chunk == 1 and past > 0:
            hidden = self._decode(inputs_embeds, position_ids, cos, sin, cache, stock_mask, kwargs)
        else:
            context.vision = self._take_verdict()
            hidden = self._prefill(inputs_embeds, attention_mask, position_ids, cos, sin, cache, stock_mask, context, kwargs)
        self.last_cache = cache
        return BaseModelOutputWithPast(
            last_hidden_state=self.language_model.norm(hidden), past_key_values=cache if use_cache else None
        )

    # ---- prefill -----------------------------------------------------------------------------------

    def _prefill(self, inputs_embeds, attention_mask, position_ids, cos, sin, cache, stock_mask, context, kwargs) -> Tensor:
        batch, chunk = inputs_embeds.shape[:2]
        past = cache.seen_tokens
        device = inputs_embeds.device
        valid = _valid(attention_mask, past, chunk, batch, device)
        live = LiveTokens(
            hidden=inputs_embeds,
            token_index=(torch.arange(chunk, device=device) + past).expand(batch, -1),
            valid=valid,
            is_visual=self._visual(context.input_ids, batch, chunk, device),
            protected=torch.zeros(batch, chunk, dtype=torch.bool, device=device),
            rope_position=position_ids.expand(batch, -1),
            cos=cos,
            sin=sin,
            untouched=True,
            all_valid=attention_mask is None or bool(valid.all()),  # one sync per prefill, not per layer
        )
        self._apply(live, self._vision_drops(live, context))
        visual_per_layer: list[Tensor] = []  # (B,) per layer, read once after the loop
        tokens_per_layer: list[Tensor] = []
        eager = self.language_model.config._attn_implementation == "eager"
        for layer_idx, layer in enumerate(self.language_model.layers):
            self._apply(live, self.method.before_layer(self._before_state(layer_idx, layer, live, cache)))
            visual_per_layer.append((live.is_visual & live.valid).sum(1))
            tokens_per_layer.append(live.valid.sum(1))
            layer_cos, layer_sin, rope_position = self._prefill_rope(cache, layer_idx, live)
            stock_compatible = live.untouched and not cache.meta.layers[layer_idx].pruned
            cache.record(layer_idx, _entries(live, rope_position), all_valid=live.all_valid)
            cache.meta.layers[layer_idx].pruned = not stock_compatible
            mask = stock_mask if stock_compatible else self._layer_mask(cache, layer_idx, live.token_index, eager, live.hidden.dtype)
            query = self.method.score_request(layer_idx)
            hidden_in = live.hidden
            live.hidden = layer(
                live.hidden, attention_mask=mask, position_embeddings=(layer_cos, layer_sin),
                position_ids=position_ids if live.untouched else rope_position, past_key_values=cache, use_cache=True,
                **kwargs,
            )  # fmt: skip
            live.follow()
            after = self._live_state(layer_idx, live, cache)
            if query is not None:
                with self._timed("scoring"):
                    rows, after.query_valid = _query_rows(query, live)
                    entries = cache.entries(layer_idx)
                    scores = score_rows(
                        layer, rows, after.query_valid, live.token_index.gather(1, rows), hidden_in, layer_cos, layer_sin,
                        cache.layers[layer_idx].keys, entries.token_index, entries.valid,
                    )  # fmt: skip
                after.attention = scores[..., -live.token_index.shape[1] :].to(live.valid.device)  # the live tokens are the newest
            self._apply(live, self.method.after_layer(after))
        cache.seen_tokens = past + chunk
        cache.meta.decode_steps = 0
        self._prefill_end(cache)
        cache.meta.prefills.append(
            PrefillTrace(
                visual_per_layer=torch.stack(visual_per_layer, 1).tolist(),  # [sample][layer]
                tokens_per_layer=torch.stack(tokens_per_layer, 1).tolist(),
                visual_input=visual_per_layer[0].tolist(),
                kv_after_prefill=cache.lengths(),
            )
        )
        return live.hidden

    def _prefill_rope(self, cache: PrunableCache, layer_idx: int, live: LiveTokens) -> tuple[Tensor, Tensor, Tensor]:
        """(cos, sin, positions) of the live tokens in this layer, under the position policy."""
        state = cache.meta.layers[layer_idx]
        if self.position_policy == "keep" or (live.untouched and not state.shifted):
            return live.cos, live.sin, live.rope_position
        # compact: this layer's tokens sit at contiguous positions right after the ones it holds, so
        # relative distances stay consistent within every layer, in prefill and decode alike.
        base = cache.next_rope_position(layer_idx, live.hidden.shape[0], live.hidden.device)
        rope_position = positions.compact(base, live.valid)
        state.shifted = True  # from now on this layer's decode positions follow its own entries
        cos, sin = self.language_model.rotary_emb(live.hidden, position_ids=rope_position)
        return cos, sin, rope_position

    def _vision_drops(self, live: LiveTokens, context: ForwardContext) -> list[Tensor] | None:
        """Apply a vision stage's verdicts: protect slots, and drop the ones it merged away."""
        if context.vision is None:
            return None
        device = live.hidden.device
        image_token = torch.isin(context.input_ids.to(device), torch.tensor(self._visual_ids, device=device))
        dropped = torch.zeros_like(live.valid)
        dropped[image_token] = ~context.vision.keep.to(device)
        live.protected = live.protected.clone()
        live.protected[image_token] = context.vision.protected.to(device)
        if not bool(dropped.any()):
            return None
        return [(~row).nonzero().squeeze(1) for row in dropped]

    def _prefill_end(self, cache: PrunableCache) -> None:
        views = [self._cache_state(cache, layer) for layer in range(self.num_layers)]
        for layer, keep in (self.method.on_prefill_end(views) or {}).items():
            with self._timed("gathering"):
                index, filler, any_filler = pad_keep(keep)
                cache.keep_entries(layer, index, filler, any_filler=any_filler)

    # ---- decode --------------------------------------------------------------------------------------

    def _decode(self, inputs_embeds, position_ids, cos, sin, cache, stock_mask, kwargs) -> Tensor:
        """One token per sample through every layer. Nothing in this loop reads a tensor on the host
        (no .item(), .tolist() or truth test): on a GPU each would stall the pipeline once per layer
        (tests/test_engine.py traps them)."""
        hidden = inputs_embeds
        batch = inputs_embeds.shape[0]
        rope_position = position_ids.expand(batch, -1)
        decode_step = cache.meta.decode_steps + 1
        eager = self.language_model.config._attn_implementation == "eager"
        token_index = None  # the new token's index, for rebuilt masks and scoring only
        if self._decode_hooks or any(cache.meta.pruned):
            token_index = torch.full((batch, 1), cache.seen_tokens, device=inputs_embeds.device)
        shared_rope = self._shared_compact_rope(cache, inputs_embeds)
        for layer_idx, layer in enumerate(self.language_model.layers):
            state = cache.meta.layers[layer_idx]
            layer_cos, layer_sin, layer_position = cos, sin, rope_position
            if layer_idx in shared_rope:
                layer_position, layer_cos, layer_sin = shared_rope[layer_idx]
            elif state.shifted:  # compact positions in this layer: one past its own last
                layer_position = cache.next_rope_position(layer_idx, batch, hidden.device)[:, None]
                layer_cos, layer_sin = self.language_model.rotary_emb(hidden, position_ids=layer_position)
            cache.record_decode(layer_idx, layer_position)
            mask = stock_mask if not state.pruned else self._layer_mask(cache, layer_idx, token_index, eager, hidden.dtype)
            hidden_in = hidden
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=(layer_cos, layer_sin), position_ids=layer_position,
                past_key_values=cache, use_cache=True, **kwargs,
            )  # fmt: skip
            if self._decode_hooks:
                self._decode_hooks_at(cache, layer_idx, layer, hidden_in, token_index, layer_cos, layer_sin, decode_step)
        cache.seen_tokens += 1
        cache.meta.decode_steps = decode_step
        return hidden

    def _shared_compact_rope(self, cache, inputs_embeds) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
        """layer -> (position (B, 1), cos, sin) for this step's compact-position layers, from one
        rotary call for all of them instead of one per layer (RoPE is elementwise in the position;
        on a small model the per-layer calls cost ~7% of the decode step). Only for layers on the
        input's device, and never with decode hooks, which may change a later layer's entries."""
        if self._decode_hooks:
            return {}
        device = inputs_embeds.device
        layers = [i for i, state in enumerate(cache.meta.layers) if state.shifted and cache.layers[i].keys.device == device]
        if len(layers) < 2:
            return {}
        batch = inputs_embeds.shape[0]
        positions = torch.cat([cache.next_rope_position(i, batch, device) for i in layers])[:, None]  # (L*B, 1)
        cos, sin = self.language_model.rotary_emb(inputs_embeds, position_ids=positions)
        return {i: (p, c, s) for i, p, c, s in zip(layers, positions.split(batch), cos.split(batch), sin.split(batch))}

    def _decode_hooks_at(self, cache, layer_idx, layer, hidden_in, token_index, cos, sin, decode_step) -> None:
        step = DecodeStep(layer=layer_idx, num_layers=self.num_layers, decode_step=decode_step, memory=cache.meta.method_state)
        if not self.method.decode_score_request(step):
            return
        with self._timed("scoring"):
            batch = hidden_in.shape[0]
            entries = cache.entries(layer_idx)
            rows = torch.zeros(batch, 1, dtype=torch.long, device=hidden_in.device)
            rows_valid = torch.ones(batch, 1, dtype=torch.bool, device=hidden_in.device)
            scores = score_rows(layer, rows, rows_valid, token_index, hidden_in, cos, sin, cache.layers[layer_idx].keys,
                                entries.token_index, entries.valid)  # fmt: skip
        state = self._cache_state(cache, layer_idx, decode_step=decode_step)
        scores = scores.to(state.valid.device)
        state.attention = scores  # (B, 1, T): the new token over this layer's whole cache
        state.attention_sum = cache.add_attention(layer_idx, scores[:, 0])
        keep = self.method.on_decode_layer(state)
        if keep is not None:  # hidden from the next step on
            with self._timed("gathering"):
                index, filler, any_filler = pad_keep([k.to(hidden_in.device) for k in keep])
                cache.keep_entries(layer_idx, index, filler, any_filler=any_filler)

    # ---- pieces ------------------------------------------------------------------------------------

    def _prunable(self, cache) -> PrunableCache:
        if isinstance(cache, PrunableCache):
            return cache
        if cache is not None and cache.get_seq_length() > 0:
            raise UnsupportedError(
                "this conversation's KV cache was built without the trimming engine",
                hint="start the conversation with the trimming profile installed",
            )
        # An empty stock cache from generate() is swapped for ours; generate() keeps the one we return.
        return PrunableCache(self.language_model.config, self.num_layers)

    def _stock_mask(self, inputs_embeds, attention_mask, position_ids, cache):
        layer_idx = None
        if cache is not None:
            # Size it against a layer that still holds every token (layer 0 may have been pruned).
            layer_idx = next((i for i, pruned in enumerate(cache.meta.pruned) if not pruned), None)
            if layer_idx is None:
                return None  # every layer gets a rebuilt mask
        return create_causal_mask(
            config=self.language_model.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            past_key_values=cache, position_ids=position_ids, layer_idx=layer_idx,
        )  # fmt: skip

    def _layer_mask(self, cache: PrunableCache, layer_idx: int, query_index: Tensor, eager: bool, dtype) -> Tensor | None:
        """The mask for a layer whose stored entries are not the stock sequence (its keys include
        the queries, which are its newest entries)."""
        queries, total = query_index.shape[1], cache.stored_length(layer_idx)
        if cache.meta.layers[layer_idx].all_valid and (queries == 1 or (queries == total and not eager)):
            return None  # a single query over a full cache, or sdpa's is_causal path, as stock does
        entries = cache.entries(layer_idx)
        allowed = masks.see_themselves(masks.allowed_keys(query_index, entries.token_index, entries.valid))
        return masks.attention_mask(allowed, eager=eager, dtype=dtype)

    def _visual(self, input_ids, batch, chunk, device) -> Tensor:
        if not self._visual_ids:
            return torch.zeros(batch, chunk, dtype=torch.bool, device=device)
        if input_ids is None or input_ids.shape != (batch, chunk):
            if isinstance(self.method, NoTrimming):
                return torch.zeros(batch, chunk, dtype=torch.bool, device=device)
            raise UnsupportedError("the trimming engine needs input_ids to find the visual tokens (got inputs_embeds)")
        return torch.isin(input_ids.to(device), torch.tensor(self._visual_ids, device=device))

    def _before_state(self, layer_idx: int, layer, live: LiveTokens, cache: PrunableCache) -> LiveState:
        """The state before_layer sees, with what the method asked for this layer."""
        state = self._live_state(layer_idx, live, cache)
        query = self.method.pre_score_request(layer_idx)
        if query is not None:
            with self._timed("scoring"):
                rows, state.query_valid = _query_rows(query, live)
                cos, sin = (live.cos, live.sin)
                if self.position_policy == "compact" and not live.untouched:
                    base = cache.next_rope_position(layer_idx, live.hidden.shape[0], live.hidden.device)
                    cos, sin = self.language_model.rotary_emb(live.hidden, position_ids=positions.compact(base, live.valid))
                state.attention = score_rows_before(layer, rows, state.query_valid, live.token_index, live.valid,
                                                    live.hidden, cos, sin).to(live.valid.device)  # fmt: skip
        if self.method.feature_request(layer_idx) and layer_idx > 0:
            count = live.token_index.shape[1]
            entries = cache.entries(layer_idx - 1)
            if not torch.equal(entries.token_index[:, -count:], live.token_index):
                raise UnsupportedError("a method asked for the previous layer's keys after tokens were dropped behind it")
            keys = cache.layers[layer_idx - 1].keys[:, :, -count:]  # the live tokens are its newest entries
            state.keys = keys.transpose(1, 2).reshape(keys.shape[0], keys.shape[2], -1).to(live.valid.device)
            state.normed_hidden = self.language_model.norm(live.hidden)
        return state

    def _live_state(self, layer_idx: int, live: LiveTokens, cache: PrunableCache) -> LiveState:
        return LiveState(
            layer=layer_idx, num_layers=self.num_layers, token_index=live.token_index, valid=live.valid,
            is_visual=live.is_visual, protected=live.protected, hidden=live.hidden, memory=cache.meta.method_state,
        )  # fmt: skip

    def _cache_state(self, cache: PrunableCache, layer: int, *, decode_step: int = 0) -> CacheState:
        entries = cache.entries(layer)
        return CacheState(
            layer=layer, num_layers=self.num_layers, token_index=entries.token_index, valid=entries.valid,
            is_visual=entries.is_visual, protected=entries.protected, memory=cache.meta.method_state,
            decode_step=decode_step, attention_sum=entries.attention_sum,
        )  # fmt: skip

    @contextlib.contextmanager
    def _timed(self, kind: str):
        if not self.measure_overhead:
            yield
            return
        device = self.language_model.embed_tokens.weight.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
        sync(device)
        started = time.perf_counter()
        yield
        sync(device)
        self.overhead_s[kind] += time.perf_counter() - started

    def _apply(self, live: LiveTokens, keep: list[Tensor] | None) -> None:
        if keep is None:
            return
        with self._timed("gathering"):
            index, filler, any_filler = pad_keep([k.to(live.hidden.device) for k in keep])
            live.gather(index, filler, any_filler=any_filler)


def _given_or(value, default):
    return default if value is None else value


def _valid(attention_mask, past, chunk, batch, device) -> Tensor:
    if attention_mask is None or attention_mask.ndim != 2:
        return torch.ones(batch, chunk, dtype=torch.bool, device=device)
    return attention_mask[:, past : past + chunk].to(device=device, dtype=torch.bool)


def _entries(live: LiveTokens, rope_position: Tensor) -> Entries:
    return Entries(
        token_index=live.token_index, rope_position=rope_position, valid=live.valid, is_visual=live.is_visual,
        protected=live.protected, attention_sum=torch.zeros(live.valid.shape, dtype=torch.float32, device=live.valid.device),
    )  # fmt: skip


def _query_rows(query: QuerySpec, live: LiveTokens) -> tuple[Tensor, Tensor]:
    """(B, R) indices of the query rows in the live sequence, and which rows are real."""
    batch, n = live.token_index.shape
    device = live.token_index.device
    if query is QuerySpec.LAST_TOKEN:
        # Left padding keeps every sample's last prompt token at the last position.
        return torch.full((batch, 1), n - 1, device=device), torch.ones(batch, 1, dtype=torch.bool, device=device)
    positions_ = torch.arange(n, device=device).expand(batch, -1)
    last_visual = torch.where(live.is_visual, positions_, -1).max(dim=1).values  # (B,)
    after = (positions_ > last_visual[:, None]) & live.valid & ~live.is_visual
    count = int(after.sum(1).max())
    order = torch.sort(after.long(), dim=1, descending=True, stable=True).indices[:, :count]
    rows = order.sort(dim=1).values
    return rows, after.gather(1, rows)


def _bound_forward(trimmer: Trimmer):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, **kwargs):  # fmt: skip
        for flag in ("output_attentions", "output_hidden_states"):
            if kwargs.pop(flag, None):
                raise UnsupportedError(f"{flag} is not available while a trimming profile is installed")
        kwargs.pop("return_dict", None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        return trimmer.forward(
            inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            use_cache=self.config.use_cache if use_cache is None else use_cache, **kwargs,
        )  # fmt: skip

    return forward
