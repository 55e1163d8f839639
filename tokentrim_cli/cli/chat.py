"""`tokentrim chat`: answer a prompt about images, with a trimming profile applied."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import UsageError
from . import app, err, out, reports_errors
from .loading import load_model
from .options import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROFILE,
    AttnImpl,
    AttnOpt,
    DeviceOpt,
    DType,
    DTypeOpt,
    JsonOpt,
    ModelOpt,
    OfflineOpt,
    ProfileOpt,
    Quantize,
    QuantizeOpt,
    QuietOpt,
    RevisionOpt,
    VerboseOpt,
    check_device,
)


@app.command(
    help=(
        "Answer a prompt about one or more images, streaming the answer to stdout.\n\n"
        "A one-line summary (visual tokens in -> kept, time to first token, tokens/s) goes to stderr. "
        "Without -p on a terminal, an interactive chat starts (/help lists its commands).\n\n"
        "Examples:\n\n"
        "  tokentrim chat --image cat.jpg -p 'What is in the picture?'\n\n"
        "  tokentrim chat -m llava-hf/llava-1.5-7b-hf --profile vtw -i a.jpg -i b.jpg -p 'Compare them.'\n\n"
        "  echo 'Describe it.' | tokentrim chat -i cat.jpg --json\n\n"
        "  tokentrim chat -i cat.jpg            # interactive: /image, /profile, /stats, /save, /exit"
    )
)
@reports_errors
def chat(
    image: Annotated[list[str] | None, typer.Option("--image", "-i", help="Image path or http(s) URL; repeatable.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The question; read from stdin when omitted.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    model: ModelOpt = None,
    profile: ProfileOpt = DEFAULT_PROFILE,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "--max-tokens", min=1, help="Upper bound on the answer's length.")
    ] = DEFAULT_MAX_NEW_TOKENS,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling (temperature > 0).")] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for sampling.")] = None,
    revision: RevisionOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.auto,
    quantize: QuantizeOpt = Quantize.none,
    attn_impl: AttnOpt = AttnImpl.auto,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from .. import inputs

    images = image or []
    device = check_device(device)
    missing = inputs.check_image_paths(images)
    if missing:  # a usage error, before anything heavy is imported or loaded
        raise UsageError(f"image not found: {', '.join(missing)}")
    interactive = prompt is None and sys.stdin.isatty()
    if interactive and as_json:
        raise UsageError("--json needs a prompt: -p/--prompt or one piped on stdin")
    if prompt is None and not interactive:
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise UsageError("the prompt read from stdin is empty")
    from .. import generation, metrics, profiles, render

    trimming = profiles.load_profile(profile)
    loaded_images = [inputs.load_image(source) for source in images]
    loaded = load_model(
        model, revision=revision, offline=offline, device=device, dtype=dtype, quantize=quantize,
        attn_impl=attn_impl, quiet=quiet or as_json,
    )  # fmt: skip
    settings = generation.GenerationSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    if interactive:
        from ..conversation import Conversation
        from .repl import run_repl

        conversation = Conversation(loaded, trimming, settings=settings, system=system, pending_images=loaded_images)
        run_repl(conversation, load_profile=profiles.load_profile)
        return

    def stream(text: str) -> None:
        out.file.write(text)
        out.file.flush()

    result = generation.generate(
        loaded, trimming, images=loaded_images, prompt=prompt, system=system, settings=settings,
        on_text=None if as_json else stream,
    )  # fmt: skip
    if as_json:
        document = render.generation_document(
            result, model_info=loaded.info, profile=trimming, versions=metrics.provenance(loaded.info)
        )
        out.file.write(render.to_json(document) + "\n")
        return
    out.file.write("\n")
    if not quiet:
        err.print(render.generation_summary(result, verbose=verbose), markup=False)
