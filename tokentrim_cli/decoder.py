"""The trimming engine: owns the language model's forward on one model instance (engine.md).

`Trimmer(model, method).install()` replaces `model.model.language_model.forward` on that instance
only (not the class) with a loop over the unchanged decoder layers that can drop tokens between
layers by gathering. `generate()` stays untouched: sampling, stopping and streaming come for free.
With the neutral setting (or the `none` method) the loop is stock transformers, bit for bit: it
uses the stock mask and RoPE tensors for every layer whose token set nothing has changed.

Index spaces (engine.md "Traps"): `token_index` is a token's column in the 2D attention mask
(padding included), used for causality; `rope_position` is the RoPE position its key is encoded
at. Dropped tokens keep their positions under the `keep` policy and are renumbered per layer under
`compact`.
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

from .cache import PrefillTrace, PrunableCache
from .errors import UnsupportedError
from .methods.base import LayerState, Method, NoTrimming, QuerySpec, VisionInputs
from .scoring import attention_rows

POSITION_POLICIES = ("keep", "compact")
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class _Live:
    """The tokens currently flowing through the decoder, (B, N) each; hidden is (B, N, D)."""

    hidden: Tensor
    token_index: Tensor
    valid: Tensor
    is_visual: Tensor
    protected: Tensor
    rope_position: Tensor
    cos: Tensor
    sin: Tensor
    untouched: bool  # still exactly the chunk stock transformers would run (stock mask and RoPE apply)
    all_valid: bool  # no padding or filler among the live tokens (host-side, to avoid device syncs)

    def gather(self, index: Tensor, filler: Tensor) -> None:
        def take(t: Tensor) -> Tensor:
            return t.gather(1, index)

        self.hidden = self.hidden.gather(1, index[..., None].expand(-1, -1, self.hidden.shape[-1]))
        self.token_index = take(self.token_index)
        self.valid = take(self.valid) & ~filler
        self.is_visual = take(self.is_visual) & ~filler
        self.protected = take(self.protected) & ~filler
        self.rope_position = take(self.rope_position)
        expanded = index[..., None].expand(-1, -1, self.cos.shape[-1])
        self.cos = self.cos.expand(index.shape[0], -1, -1).gather(1, expanded)
        self.sin = self.sin.expand(index.shape[0], -1, -1).gather(1, expanded)
        self.untouched = False
        self.all_valid = self.all_valid and not bool(filler.any())


def pad_keep(keep: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-sample keep indices into (B, n), left-filling short rows with filler entries.

    Fillers repeat the sample's first kept index and are flagged so masks hide them: a batch needs
    one length, while methods may keep different counts per sample (engine.md "Traps").
    """
    longest = max(k.numel() for k in keep)
    rows, fillers = [], []
    for k in keep:
        missing = longest - k.numel()
        rows.append(torch.cat([k[:1].expand(missing), k]))
        fillers.append(torch.arange(longest, device=k.device) < missing)
    return torch.stack(rows), torch.stack(fillers)


def _visual_token_ids(config) -> list[int]:
    ids = [getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)]
    return [i for i in ids if i is not None]


class Trimmer:
    """Runs a trimming method inside one LLaVA-family model. Use as a context manager or install()."""

    def __init__(
        self, model, method: Method | None = None, *, position_policy: str = "keep", measure_overhead: bool = False
    ) -> None:
        if position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {position_policy!r}")
        self.model = model
        self.method = method or NoTrimming(NoTrimming.Config())
        self.position_policy = position_policy
        self.language_model = model.model.language_model
        self.num_layers = len(self.language_model.layers)
        self.method.config.check_model(self.num_layers)
        self._visual_ids = _visual_token_ids(model.config)
        self._pending_input_ids: Tensor | None = None
        self._last_input_ids: Tensor | None = None  # the current prefill's, for the vision stage's slots
        self._pending_vision: tuple[Tensor, Tensor] | None = None  # (keep, protected) over image slots
        self._handles: list = []
        self.last_cache: PrunableCache | None = None
        # Seconds spent scoring (attention rows) and gathering (dropping tokens, evicting entries),
        # measured with device synchronisation, so only when asked: the sync itself costs time.
        self.measure_overhead = measure_overhead
        self.overhead_s = {"scoring": 0.0, "gathering": 0.0}

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
                hint="LLaVA-NeXT packs crops and newline tokens after the vision tower",
            )
        self._handles.append(
            self.model.model.register_forward_pre_hook(self._record_input_ids, with_kwargs=True)
        )
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

    def __enter__(self) -> Trimmer:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _record_input_ids(self, module, args, kwargs) -> None:
        # LlavaModel passes only inputs_embeds to the language model; the visual span comes from here.
        self._pending_input_ids = kwargs.get("input_ids", args[0] if args else None)

    def _vision_stage(self, stock_get_image_features):
        """Wrap LlavaModel.get_image_features so the method's vision stage supplies the features."""

        def get_image_features(pixel_values, **kwargs):
            def stock() -> list[Tensor]:
                return list(stock_get_image_features(pixel_values, **kwargs).pooler_output)

            output = self.method.on_vision(VisionInputs(self.model.model, pixel_values, kwargs, stock))
            if output is None:
                return stock_get_image_features(pixel_values, **kwargs)
            protected = output.protected or [torch.zeros_like(k) for k in output.keep]
            # Placeholders are filled image after image in row-major order, as masked_scatter does.
            self._pending_vision = (torch.cat(output.keep), torch.cat(protected))
            return BaseModelOutputWithPooling(pooler_output=output.features)

        return get_image_features

    # ---- the forward -----------------------------------------------------------------------------

    def forward(
        self,
        inputs_embeds: Tensor,
        *,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        past_key_values,
        use_cache: bool,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        lm = self.language_model
        batch, chunk = inputs_embeds.shape[:2]
        caller_cache = past_key_values
        cache = self._prunable(past_key_values)
        past = cache.seen_tokens
        decoding = chunk == 1 and past > 0
        if position_ids is None:  # the stock default
            position_ids = (torch.arange(chunk, device=inputs_embeds.device) + past).unsqueeze(0)

        # Stock builds its one mask before any layer runs, with a cache whenever it will use one.
        mask_cache = cache if caller_cache is not None or use_cache else None
        stock_mask = self._stock_mask(inputs_embeds, attention_mask, position_ids, mask_cache)
        live = self._live(inputs_embeds, attention_mask, position_ids, past, decoding)
        if not decoding:
            self._apply(live, self._vision_drops(live))

        visual_per_layer: list[Tensor] = []  # (B,) per layer
        tokens_per_layer: list[Tensor] = []
        for layer_idx, layer in enumerate(lm.layers):
            if not decoding:
                self._apply(live, self.method.before_layer(self._state(layer_idx, live, cache)))
                # Counted on the device, read once after the loop: a .tolist() per layer would
                # stall a GPU once per layer.
                visual_per_layer.append((live.is_visual & live.valid).sum(1))
                tokens_per_layer.append(live.valid.sum(1))
            cos, sin, rope_position = self._rope_for_layer(cache, layer_idx, live)
            stock_compatible = live.untouched and not cache.meta.pruned[layer_idx]
            cache.record(
                layer_idx,
                token_index=live.token_index,
                rope_position=rope_position,
                valid=live.valid,
                is_visual=live.is_visual,
                protected=live.protected,
                attention_sum=torch.zeros(live.valid.shape, dtype=torch.float32, device=live.valid.device),
                all_valid=live.all_valid,
            )
            # Once a layer stores anything but the full sequence, only rebuilt masks are right for it.
            cache.meta.pruned[layer_idx] = not stock_compatible
            mask = stock_mask if stock_compatible else self._mask(cache, layer_idx, live)
            query = None if decoding else self.method.score_request(layer_idx)
            hidden_in = live.hidden
            live.hidden = layer(
                live.hidden,
                attention_mask=mask,
                position_embeddings=(cos, sin),
                position_ids=position_ids if live.untouched else rope_position,
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
            if decoding:
                self._decode_step(cache, layer_idx, layer, live, hidden_in, cos, sin)
                continue
            state = self._state(layer_idx, live, cache)
            if query is not None:
                with self._timed("scoring"):
                    scores, state.query_valid = self._score(query, state, layer, cache, layer_idx, hidden_in, cos, sin)
                state.attention = scores[..., -live.token_index.shape[1] :]  # the live tokens are the newest
            self._apply(live, self.method.after_layer(state))

        cache.seen_tokens = past + chunk
        if decoding:
            cache.meta.decode_steps += 1
        else:
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
        self.last_cache = cache
        return BaseModelOutputWithPast(
            last_hidden_state=lm.norm(live.hidden),
            past_key_values=cache if use_cache else None,
        )

    def _live(self, inputs_embeds, attention_mask, position_ids, past, decoding) -> _Live:
        batch, chunk = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        cos, sin = self.language_model.rotary_emb(inputs_embeds, position_ids=position_ids)
        no = torch.zeros(batch, chunk, dtype=torch.bool, device=device)
        valid = self._valid(attention_mask, past, chunk, batch, device)
        return _Live(
            hidden=inputs_embeds,
            token_index=(torch.arange(chunk, device=device) + past).expand(batch, -1),
            valid=valid,
            is_visual=self._is_visual(batch, chunk, device, decoding=decoding),
            protected=no,
            rope_position=position_ids.expand(batch, -1),
            cos=cos,
            sin=sin,
            untouched=True,
            all_valid=attention_mask is None or bool(valid.all()),  # one sync per forward, not per layer
        )

    def _vision_drops(self, live: _Live) -> list[Tensor] | None:
        """Apply a vision stage's verdicts: protect slots, and drop the ones it merged away."""
        pending, self._pending_vision = self._pending_vision, None
        if pending is None:
            return None
        keep_slots, protected_slots = (t.to(live.hidden.device) for t in pending)
        image_token = torch.isin(self._last_input_ids, torch.tensor(self._visual_ids, device=live.hidden.device))
        dropped = torch.zeros_like(live.valid)
        dropped[image_token] = ~keep_slots
        live.protected = live.protected.clone()
        live.protected[image_token] = protected_slots
        if not dropped.any():
            return None
        return [(~row).nonzero().squeeze(1) for row in dropped]

    def _decode_step(self, cache, layer_idx, layer, live, hidden_in, cos, sin) -> None:
        state = self._cache_state(cache, layer_idx, decode_step=cache.meta.decode_steps + 1)
        if not self.method.decode_score_request(state):
            return
        with self._timed("scoring"):
            live_state = self._state(layer_idx, live, cache)
            scores, _ = self._score(QuerySpec.LAST_TOKEN, live_state, layer, cache, layer_idx, hidden_in, cos, sin)
        state.attention = scores  # (B, 1, T): the new token over this layer's whole cache
        cache.meta.attention_sum[layer_idx] = cache.meta.attention_sum[layer_idx] + scores[:, 0]
        state.attention_sum = cache.meta.attention_sum[layer_idx]
        keep = self.method.on_decode_layer(state)
        if keep is not None:  # hidden from the next step on
            with self._timed("gathering"):
                cache.keep_entries(layer_idx, *pad_keep([k.to(live.hidden.device) for k in keep]))

    def _prefill_end(self, cache: PrunableCache) -> None:
        views = [self._cache_state(cache, layer) for layer in range(self.num_layers)]
        for layer, keep in (self.method.on_prefill_end(views) or {}).items():
            with self._timed("gathering"):
                cache.keep_entries(layer, *pad_keep(keep))

    def _cache_state(self, cache: PrunableCache, layer: int, *, decode_step: int = 0) -> LayerState:
        meta = cache.meta
        return LayerState(
            layer=layer,
            num_layers=self.num_layers,
            token_index=meta.token_index[layer],
            valid=meta.valid[layer],
            is_visual=meta.is_visual[layer],
            protected=meta.protected[layer],
            memory=meta.method_state,
            decode_step=decode_step,
            attention_sum=meta.attention_sum[layer],
        )

    # ---- pieces of the forward -------------------------------------------------------------------

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
            config=self.language_model.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
            layer_idx=layer_idx,
        )

    @staticmethod
    def _valid(attention_mask, past, chunk, batch, device) -> Tensor:
        if attention_mask is None or attention_mask.ndim != 2:
            return torch.ones(batch, chunk, dtype=torch.bool, device=device)
        return attention_mask[:, past : past + chunk].to(device=device, dtype=torch.bool)

    def _is_visual(self, batch, chunk, device, *, decoding: bool) -> Tensor:
        input_ids, self._pending_input_ids = self._pending_input_ids, None
        if decoding or not self._visual_ids:
            return torch.zeros(batch, chunk, dtype=torch.bool, device=device)
        if input_ids is None or input_ids.shape != (batch, chunk):
            if isinstance(self.method, NoTrimming):
                return torch.zeros(batch, chunk, dtype=torch.bool, device=device)
            raise UnsupportedError("the trimming engine needs input_ids to find the visual tokens (got inputs_embeds)")
        self._last_input_ids = input_ids.to(device)
        ids = torch.tensor(self._visual_ids, device=input_ids.device)
        return torch.isin(input_ids, ids).to(device)

    def _state(self, layer_idx: int, live: _Live, cache: PrunableCache) -> LayerState:
        return LayerState(
            layer=layer_idx,
            num_layers=self.num_layers,
            token_index=live.token_index,
            valid=live.valid,
            is_visual=live.is_visual,
            protected=live.protected,
            memory=cache.meta.method_state,
        )

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

    def _apply(self, live: _Live, keep: list[Tensor] | None) -> None:
        if keep is None:
            return
        with self._timed("gathering"):
            index, filler = pad_keep([k.to(live.hidden.device) for k in keep])
            live.gather(index, filler)

    # ---- positions -------------------------------------------------------------------------------

    def _rope_for_layer(self, cache: PrunableCache, layer_idx: int, live: _Live) -> tuple[Tensor, Tensor, Tensor]:
        """(cos, sin, positions) for the live tokens in this layer, under the position policy."""
        if self.position_policy == "keep":
            return live.cos, live.sin, live.rope_position
        # compact: this layer's tokens sit at contiguous positions right after the ones it holds, so
        # relative distances stay consistent within every layer, in prefill and decode alike.
        base = self._next_position(cache, layer_idx, live)
        relative = live.valid.long().cumsum(1) - 1
        positions = (base[:, None] + relative).clamp(min=0)
        if torch.equal(positions, live.rope_position):
            return live.cos, live.sin, positions
        cos, sin = self.language_model.rotary_emb(live.hidden, position_ids=positions)
        return cos, sin, positions

    @staticmethod
    def _next_position(cache: PrunableCache, layer_idx: int, live: _Live) -> Tensor:
        stored = cache.meta.rope_position[layer_idx]
        if stored is None:
            return torch.zeros(live.hidden.shape[0], dtype=torch.long, device=live.hidden.device)
        valid = cache.meta.valid[layer_idx]
        return stored.masked_fill(~valid, -1).max(dim=1).values + 1

    # ---- masks -----------------------------------------------------------------------------------

    def _mask(self, cache: PrunableCache, layer_idx: int, live: _Live) -> Tensor | None:
        """The mask for `layer_idx` built from the stored token indices (its keys include `live`)."""
        keys_index = cache.meta.token_index[layer_idx]  # (B, T)
        keys_valid = cache.meta.valid[layer_idx]
        queries, total = live.token_index.shape[1], keys_index.shape[1]
        eager = self.language_model.config._attn_implementation == "eager"
        all_valid = cache.meta.all_valid[layer_idx]
        if all_valid and not eager and (queries == total or queries == 1):
            return None  # sdpa's is_causal path (or a single query over a full cache), as stock does
        if all_valid and eager and queries == 1:
            return None
        allowed = (keys_index[:, None, :] <= live.token_index[:, :, None]) & keys_valid[:, None, :]
        # Every query sees itself, so filler and padding rows never go NaN.
        own = torch.arange(total - queries, total, device=allowed.device)
        allowed[:, torch.arange(queries, device=allowed.device), own] = True
        allowed = allowed[:, None]  # (B, 1, N, T)
        if not eager:
            return allowed
        dtype = live.hidden.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    # ---- scoring ---------------------------------------------------------------------------------

    def _score(self, query, state, layer, cache, layer_idx, hidden_in, cos, sin) -> tuple[Tensor, Tensor]:
        """(B, R, T) head-mean attention of the query rows over the layer's cached keys, and row validity."""
        rows, rows_valid = _query_rows(query, state)
        take = rows[..., None]
        hidden_rows = hidden_in.gather(1, take.expand(-1, -1, hidden_in.shape[-1]))
        cos_rows = cos.expand(rows.shape[0], -1, -1).gather(1, take.expand(-1, -1, cos.shape[-1]))
        sin_rows = sin.expand(rows.shape[0], -1, -1).gather(1, take.expand(-1, -1, sin.shape[-1]))
        keys_index, keys_valid = cache.meta.token_index[layer_idx], cache.meta.valid[layer_idx]
        row_index = state.token_index.gather(1, rows)
        allowed = (keys_index[:, None, :] <= row_index[:, :, None]) & keys_valid[:, None, :] & rows_valid[..., None]
        scores = attention_rows(layer, hidden_rows, cos_rows, sin_rows, cache.layers[layer_idx].keys, allowed)
        return scores, rows_valid


def _query_rows(query: QuerySpec, state: LayerState) -> tuple[Tensor, Tensor]:
    """(B, R) indices of the query rows in the live sequence, and which rows are real."""
    batch, n = state.token_index.shape
    device = state.token_index.device
    if query is QuerySpec.LAST_TOKEN:
        # Left padding keeps every sample's last prompt token at the last position.
        return torch.full((batch, 1), n - 1, device=device), torch.ones(batch, 1, dtype=torch.bool, device=device)
    positions = torch.arange(n, device=device).expand(batch, -1)
    last_visual = torch.where(state.is_visual, positions, -1).max(dim=1).values  # (B,)
    after = (positions > last_visual[:, None]) & state.valid & ~state.is_visual
    count = int(after.sum(1).max())
    order = torch.sort(after.long(), dim=1, descending=True, stable=True).indices[:, :count]
    rows = order.sort(dim=1).values
    return rows, after.gather(1, rows)


def _bound_forward(trimmer: Trimmer):
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        for flag in ("output_attentions", "output_hidden_states"):
            if kwargs.pop(flag, None):
                raise UnsupportedError(f"{flag} is not available while a trimming profile is installed")
        kwargs.pop("return_dict", None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        return trimmer.forward(
            inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=self.config.use_cache if use_cache is None else use_cache,
            **kwargs,
        )

    return forward


# ---- calibration support: one full prefill, then the layers after K on the text alone -----------


@dataclass
class LayerInputs:
    """What a stock prefill of one sample fed each decoder layer, for VTW's shared-prefix calibration."""

    hidden: list[Tensor]  # per layer: (1, T, D), the layer's input
    position_ids: Tensor  # (1, T)
    is_visual: Tensor  # (T,)
    logits: Tensor  # (V,) fp32: the next-token logits at the last prompt position


def capture_layer_inputs(model, inputs: dict) -> LayerInputs:
    """Run a stock prefill (batch 1, no padding) and keep every decoder layer's input."""
    lm = model.model.language_model
    captured: list[Tensor] = []
    handles = [
        layer.register_forward_pre_hook(lambda module, args, kwargs: captured.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        for layer in lm.layers
    ]
    try:
        with torch.inference_mode():
            out = model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    ids = inputs["input_ids"]
    if ids.shape[0] != 1 or ("attention_mask" in inputs and not bool(inputs["attention_mask"].all())):
        raise ValueError("capture_layer_inputs takes one unpadded sample")
    return LayerInputs(
        hidden=captured,
        position_ids=torch.arange(ids.shape[1], device=ids.device)[None],
        is_visual=torch.isin(ids[0], torch.tensor(_visual_token_ids(model.config), device=ids.device)),
        logits=out.logits[0, -1].float(),
    )


def logits_after_withdrawal(model, captured: LayerInputs, layer: int) -> Tensor:
    """(V,) fp32 last-position logits when every visual token is withdrawn before `layer`.

    Layers before `layer` are the captured stock prefill (shared by every candidate); layers from
    `layer` on run on the text tokens only, at their original positions (VTW, `keep` policy).
    """
    lm = model.model.language_model
    keep = (~captured.is_visual).nonzero().squeeze(1)
    hidden = captured.hidden[layer][:, keep]  # (1, n_text, D)
    positions = captured.position_ids[:, keep]
    cos, sin = lm.rotary_emb(hidden, position_ids=positions)
    mask = None  # sdpa: is_causal over the text tokens
    if lm.config._attn_implementation == "eager":
        n = hidden.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
        mask = torch.zeros(1, 1, n, n, dtype=hidden.dtype, device=hidden.device).masked_fill(~causal, torch.finfo(hidden.dtype).min)
    with torch.inference_mode():
        for decoder_layer in lm.layers[layer:]:
            hidden = decoder_layer(
                hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions,
                past_key_values=None, use_cache=False,
            )  # fmt: skip
        return model.lm_head(lm.norm(hidden[:, -1:]))[0, -1].float()
