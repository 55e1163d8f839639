"""Model loading for every command: a spinner on a terminal, the load time on stderr."""

from __future__ import annotations

from .options import ModelOptions


def load_model(options: ModelOptions, *, quiet: bool):
    from .. import model as model_lib
    from ..render import terminal_safe
    from . import err

    model_id = options.model or model_lib.default_model_id()
    show = not quiet
    # Our spinner and summary say what is happening; hub downloads keep their progress bars on a
    # terminal (a first 14 GB download must not look like a hang).
    model_lib.quiet_libraries(download_progress=show and err.is_terminal)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)

    def progress(message: str) -> None:
        if show:
            err.print(f"{terminal_safe(message)} ...", markup=False)

    from .options import parse_max_memory

    if (options.max_memory or options.offload_folder) and not options.device_map:
        from ..errors import UsageError

        raise UsageError("--max-memory and --offload-folder go with --device-map")
    kwargs = dict(
        revision=options.revision, offline=options.offline, device=options.device, dtype=options.dtype.value,
        quantize=options.quantize.value, attn_impl=options.attn_impl.value, progress=progress,
        device_map=options.device_map, max_memory=parse_max_memory(options.max_memory), offload_folder=options.offload_folder,
    )  # fmt: skip
    if show and err.is_terminal and not model_lib.needs_download_progress(model_id, offline=options.offline):
        with err.status(f"Loading {terminal_safe(model_id)} ..."):
            loaded = model_lib.load_llava(model_id, **kwargs)
    else:
        loaded = model_lib.load_llava(model_id, **kwargs)
    info = loaded.info
    if show:
        quantized = f", {info.quantize} decoder" if info.quantize != "none" else ""
        err.print(
            f"Loaded {terminal_safe(info.model_id)} ({info.model_type}, {info.num_layers} layers, {info.dtype}{quantized}, "
            f"{info.attn_impl}, {info.device}) in {info.load_s:.1f} s",
            markup=False,
        )
        if note := model_lib.model_note(info.model_id):
            err.print(f"Note: {note}", markup=False)
    if warning := model_lib.slow_cpu_dtype_warning(info.dtype, info.device):
        err.print(f"Warning: {warning}", markup=False)  # under --quiet too: it explains a slow run
    return loaded


def check_profiles_fit(profiles: list, options: ModelOptions) -> None:
    """Refuse profiles that cannot apply to the model, from its configuration, before any weights
    load (a wrong profile on a 7B fails in a second, not after loading 14 GB)."""
    from .. import model as model_lib
    from ..profiles import check_fits

    model_id = options.model or model_lib.default_model_id()
    peeked = model_lib.peek_layers(model_id, revision=options.revision, offline=options.offline)
    if peeked is None:
        return  # checked again once the model is loaded
    model_type, layers = peeked
    for profile in profiles:
        check_fits(profile, model_id=model_id, model_type=model_type, num_layers=layers)
