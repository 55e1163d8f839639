"""`tokentrim chat`: answer a prompt about images, with a trimming profile applied."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import UsageError
from . import app, err, out, reports_errors
from .loading import check_profiles_fit, load_model
from .options import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROFILE,
    JsonOpt,
    ModelOptions,
    ProfileOpt,
    QuietOpt,
    SeedOpt,
    VerboseOpt,
    with_model_options,
)

STDIN = "-"


@app.command(
    help=(
        "Answer a prompt about one or more images, streaming the answer to stdout.\n\n"
        "A one-line summary (visual tokens in -> kept, time to first token, tokens/s) goes to stderr. "
        "Without -p on a terminal, an interactive chat starts (/help lists its commands). "
        "'-i -' reads one image from stdin (then the prompt comes from -p).\n\n"
        "Examples:\n\n"
        "\b\n"
        "  tokentrim chat --image scene.png -p 'What is in the picture?'\n"
        "  tokentrim chat -m llava-hf/llava-1.5-7b-hf --profile vtw -i a.jpg -i b.jpg -p 'Compare them.'\n"
        "  echo 'Describe it.' | tokentrim chat -i cat.jpg --json\n"
        "  curl -s https://example.com/cat.jpg | tokentrim chat -i - -p 'Describe it.'\n"
        "  tokentrim chat -i cat.jpg            # interactive: /image, /profile, /stats, /save, /exit"
    )
)
@reports_errors
@with_model_options
def chat(
    image: Annotated[
        list[str] | None, typer.Option("--image", "-i", metavar="PATH|URL|-", help="Image path, file:// or http(s) URL, or - for stdin; repeatable.")
    ] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", metavar="TEXT", help="The question; read from stdin when omitted.")] = None,
    system: Annotated[str | None, typer.Option("--system", metavar="TEXT", help="System prompt.")] = None,
    profile: ProfileOpt = DEFAULT_PROFILE,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "--max-tokens", "-n", min=1, metavar="N", help="Upper bound on the answer's length.")
    ] = DEFAULT_MAX_NEW_TOKENS,
    temperature: Annotated[float, typer.Option("--temperature", "--temp", min=0.0, metavar="T", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, metavar="P", help="Nucleus sampling (temperature > 0).")] = 1.0,
    seed: SeedOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    *,
    model_options: ModelOptions,
) -> None:
    from .. import inputs

    images = image or []
    if images.count(STDIN) > 1:
        raise UsageError("'-i -' can be given once (stdin holds one image)")
    missing = inputs.check_image_paths([s for s in images if s != STDIN])
    if missing:  # a usage error, before anything heavy is imported or loaded
        raise UsageError(f"image not found: {', '.join(missing)}")
    if prompt is not None and not prompt.strip():
        raise UsageError("the prompt (-p) is empty")
    interactive = prompt is None and sys.stdin.isatty()
    if STDIN in images and prompt is None:
        raise UsageError("with '-i -' stdin holds the image: give the prompt with -p")
    if interactive and as_json:
        raise UsageError("--json needs a prompt: -p/--prompt or one piped on stdin")
    if prompt is None and not interactive:
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise UsageError("the prompt read from stdin is empty")
    from .. import generation, metrics, profiles, render

    trimming = profiles.load_profile(profile)
    loaded_images = [_stdin_image() if source == STDIN else inputs.load_image(source) for source in images]
    check_profiles_fit([trimming], model_options)
    loaded = load_model(model_options, quiet=quiet or as_json)
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
        out.file.write(render.model_text(text))  # a model's bytes must not drive the terminal
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
        for note in result.notes:
            err.print(f"Note: {render.terminal_safe(note)}", markup=False)
        err.print(render.generation_summary(result, verbose=verbose), markup=False)


def _stdin_image():
    from .. import inputs

    data = sys.stdin.buffer.read(inputs.MAX_IMAGE_BYTES + 1)
    if len(data) > inputs.MAX_IMAGE_BYTES:
        raise UsageError(f"the image on stdin is larger than the {inputs.MAX_IMAGE_BYTES // 2**20} MiB cap")
    if not data:
        raise UsageError("'-i -' was given but stdin is empty")
    return inputs.LoadedImage("<stdin>", inputs.decode_image(data, "<stdin>"))

