"""Model loading for every command: a spinner on a terminal, the load time on stderr."""

from __future__ import annotations


def load_model(model_id: str | None, *, revision, offline, device, dtype, quantize, attn_impl, quiet: bool):
    from .. import model as model_lib
    from . import err

    model_id = model_id or model_lib.default_model_id()
    model_lib.quiet_libraries()  # our spinner and summary say what is happening
    show = not quiet
    kwargs = dict(
        revision=revision, offline=offline, device=device, dtype=dtype.value, quantize=quantize.value,
        attn_impl=attn_impl.value,
    )  # fmt: skip
    if show and err.is_terminal:
        with err.status(f"Loading {model_id} ..."):
            loaded = model_lib.load_llava(model_id, **kwargs)
    else:
        loaded = model_lib.load_llava(model_id, **kwargs)
    if show:
        info = loaded.info
        err.print(
            f"Loaded {info.model_id} ({info.model_type}, {info.num_layers} layers, {info.dtype}, {info.attn_impl}, "
            f"{info.device}) in {info.load_s:.1f} s",
            markup=False,
        )
    return loaded
