"""Loading LLaVA-family models: hub ids, local directories, and `random:<shape>` (no download).

`load_llava()` checks the architecture from the config *before* any weights are fetched, picks
device, dtype, quantization and attention implementation, and returns a `Loaded` bundle whose
`info` is written into every report and calibrated profile.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LLAVA_FAMILY = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}
DTYPES = ("auto", "float16", "bfloat16", "float32")
QUANTIZE = ("none", "8bit", "4bit")
ATTENTION = ("auto", "sdpa", "eager")


@dataclass(frozen=True)
class LoadInfo:
    model_id: str
    revision: str  # resolved commit hash, "local" for a directory, "random" for random weights
    model_type: str
    device: str
    dtype: str
    quantize: str
    attn_impl: str
    num_layers: int
    load_s: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Loaded:
    model: object  # a *ForConditionalGeneration of the LLaVA family
    processor: object
    info: LoadInfo


# ---- random:<shape> ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """An exact architecture to build with random weights. `description` is shown by `tokentrim env`."""

    description: str
    vision: dict
    text: dict
    image_size: int
    patch_size: int
    model_type: str = "llava"
    text_model: str = "llama"
    image_token_id: int | None = None  # None: right after the byte tokenizer's vocabulary
    grid_pinpoints: tuple = ()  # LLaVA-NeXT's AnyRes resolutions


_CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip

SHAPES: dict[str, Shape] = {
    "tiny": Shape(
        "2-layer CLIP (16 visual tokens) + 4-layer Llama with grouped KV heads; for tests",
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
        image_size=32,
        patch_size=8,
    ),
    "tiny-next": Shape(
        "LLaVA-NeXT (AnyRes, several crops + newline tokens) with a 4-layer Qwen2 decoder; for tests",
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
        image_size=32,
        patch_size=8,
        model_type="llava_next",
        text_model="qwen2",
        grid_pinpoints=((32, 32), (32, 64), (64, 32), (64, 64)),
    ),
    "cpu-576": Shape(
        "CPU-sized benchmark model: 4-layer CLIP at 336 px (576 visual tokens) + 12-layer hidden-1024 Llama",
        vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
        text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                  num_key_value_heads=16),
        image_size=336,
        patch_size=14,
    ),
    "llava-1.5-7b": Shape(
        "exact llava-hf/llava-1.5-7b-hf architecture: CLIP ViT-L/14-336 + Llama-2-7B (7.06B parameters)",
        vision=_CLIP_L_336,
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5),
        image_size=336,
        patch_size=14,
        image_token_id=32000,
    ),
    "llava-1.5-7b-narrow": Shape(
        "LLaVA-1.5-7B's depth (32 layers), 576 visual tokens and vocabulary at hidden size 128: "
        "token and KV-entry traces equal the 7B's for count-scheduled methods, at a fraction of the cost",
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2),
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=32, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=32064, max_position_embeddings=4096),
        image_size=336,
        patch_size=14,
        image_token_id=32000,
    ),
    "llava-1.5-13b": Shape(
        "exact llava-hf/llava-1.5-13b-hf architecture: CLIP ViT-L/14-336 + Llama-2-13B",
        vision=_CLIP_L_336,
        text=dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=40, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5),
        image_size=336,
        patch_size=14,
        image_token_id=32000,
    ),
}


def _byte_tokenizer(image_token_id: int | None, chat_template: str):
    """A byte-level tokenizer built offline: every byte is a token; <image> sits at `image_token_id`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):  # a set: sort, or ids change per process
        vocab[char] = len(vocab)
    image_token_id = image_token_id or len(vocab)
    while len(vocab) < image_token_id:  # filler so the image token lands where the real model has it
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    vocab["<image>"] = image_token_id
    vocab["<pad>"] = image_token_id + 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return llava_tokenizer(backend, chat_template)


def llava_tokenizer(backend, chat_template: str):
    """A `tokenizers` backend with <unk> <s> </s> <pad> <image> in its vocabulary, wrapped the way
    LLaVA-1.5's tokenizer behaves: BOS added, left padding, <image> special, the chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=chat_template,
        padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.add_bos_token = True
    return tokenizer


# LLaVA-1.5's conversation format: "USER: <image>\n{question} ASSISTANT: {answer}</s>".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% else %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ ' ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_random(shape_name: str, *, seed: int = 0, device: str = "cpu", dtype=None):
    """A LLaVA model with random weights and the exact architecture of `shape_name`, plus a processor."""
    import torch
    import transformers
    from transformers import CLIPVisionConfig

    from .errors import ModelUnavailableError

    if shape_name not in SHAPES:
        raise ModelUnavailableError(
            f"unknown random shape '{shape_name}'", hint=f"known shapes: {', '.join(SHAPES)} (see `tokentrim env`)"
        )
    shape = SHAPES[shape_name]
    tokenizer = _byte_tokenizer(shape.image_token_id, LLAVA_CHAT_TEMPLATE)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text_config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[shape.text_model]
    text = dict(vocab_size=image_token_id + 64, max_position_embeddings=4096) | shape.text
    vision = dict(image_size=shape.image_size, patch_size=shape.patch_size) | shape.vision
    extra = {"image_grid_pinpoints": [list(p) for p in shape.grid_pinpoints]} if shape.grid_pinpoints else {}
    config_class = {"llava": transformers.LlavaConfig, "llava_next": transformers.LlavaNextConfig}[shape.model_type]
    config = config_class(
        vision_config=CLIPVisionConfig(**vision),
        text_config=text_config_class(
            **text,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        **extra,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, LLAVA_FAMILY[shape.model_type])(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), _processor(shape, tokenizer)


def _processor(shape: Shape, tokenizer):
    # The PIL image processors: torchvision has no CPU build here, and must not be required.
    from transformers import CLIPImageProcessorPil, LlavaNextProcessor, LlavaProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    size = dict(size={"shortest_edge": shape.image_size}, crop_size={"height": shape.image_size, "width": shape.image_size})
    common = dict(
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    if shape.model_type == "llava_next":
        pinpoints = [list(p) for p in shape.grid_pinpoints]
        return LlavaNextProcessor(image_processor=LlavaNextImageProcessorPil(**size, image_grid_pinpoints=pinpoints), **common)
    return LlavaProcessor(image_processor=CLIPImageProcessorPil(**size), **common)


# ---- loading -----------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    from .errors import EnvironmentProblem

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {device} was asked for, but CUDA is not available", hint="use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def cpu_lacks_native(dtype: str) -> str | None:
    """The CPU features whose absence makes this CPU emulate `dtype` ("AVX512-BF16 or AMX"), or None.
    An x86 CPU without AVX512-BF16 or AMX has no bfloat16 arithmetic (without AVX512, none for
    float16) and torch emulates it: on a 2-core AVX2 EPYC, 2026-12-02, a 1024x1024 bfloat16 matmul
    ran at 0.9 GFLOP/s against 170 in float32, and the default model's prefill took 8.3 s against
    1.7 s. None for other dtypes, where the dtype runs natively, on other architectures, and where
    torch cannot tell (no claim that cannot be checked)."""
    if dtype not in ("bfloat16", "float16"):
        return None
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None

    def has(feature: str) -> bool:
        check = getattr(torch.cpu, f"_is_{feature}_supported", None)  # private in torch 2.x
        return check is None or bool(check())

    if dtype == "bfloat16":
        return None if has("avx512_bf16") or has("amx_tile") else "AVX512-BF16 or AMX"
    return None if has("avx512") or has("amx_fp16") else "AVX512"


def slow_cpu_dtype_warning(dtype: str, device: str) -> str | None:
    """Why running `dtype` on `device` (a device, or a comma-separated list of them under
    --device-map) will be slow, or None: the CPU takes part and emulates the dtype."""
    missing = cpu_lacks_native(dtype) if "cpu" in device.split(",") else None
    if missing is None:
        return None
    return (f"this CPU has no native {dtype} arithmetic (no {missing}), so {dtype} runs several times slower than "
            f"float32 here; leave --dtype at auto (float32 on CPU)")  # fmt: skip


def load_llava(
    model_id: str,
    *,
    revision: str | None = None,
    offline: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    attn_impl: str = "auto",
    seed: int = 0,
    progress=None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
) -> Loaded:
    """Load a LLaVA-family model and its processor. Raises ModelUnavailableError (exit 4) and friends.

    `progress(message)` hears about slow first-use steps (assembling the built-in model).
    `device_map` ("auto", "balanced", "sequential" or {module: device}) spreads the model over
    several devices with accelerate (`max_memory` {device: "20GiB"} bounds each; layers that fit
    nowhere go to `offload_folder` on disk); the trimming engine then keeps each layer's cache and
    masks on that layer's device."""
    started = time.perf_counter()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    attn = "sdpa" if attn_impl == "auto" else attn_impl
    placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder) if device_map else {}
    if model_id.startswith(BUILTIN_PREFIX):
        directory = builtin_directory(model_id, progress=progress)
        model, processor, _, model_type = _load_pretrained(
            str(directory), revision=None, offline=True, device=device, dtype=torch_dtype, quantize=quantize, attn=attn,
            placement=placement,
        )  # fmt: skip
        revision_used = builtin_revision(model_id, directory)
    elif model_id.startswith("random:"):
        model, processor = build_random(model_id.split(":", 1)[1], seed=seed, device=device, dtype=torch_dtype)
        if quantize != "none" or placement:
            model = _reload_random(model, quantize, device, torch_dtype, attn, placement)
        model.set_attn_implementation(attn)
        revision_used, model_type = "random", model.config.model_type
    else:
        model, processor, revision_used, model_type = _load_pretrained(
            model_id, revision=revision, offline=offline, device=device, dtype=torch_dtype,
            quantize=quantize, attn=attn, placement=placement,
        )  # fmt: skip
    if placement:
        device = ",".join(sorted({str(d) for d in getattr(model, "hf_device_map", {}).values()})) or device
    info = LoadInfo(
        model_id=model_id,
        revision=revision_used,
        model_type=model_type,
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
        quantize=quantize,
        attn_impl=attn,
        num_layers=len(model.model.language_model.layers),
        load_s=time.perf_counter() - started,
    )
    return Loaded(model=model.eval(), processor=processor, info=info)


def _check_family(config, model_id: str) -> str:
    from .errors import ModelUnavailableError

    model_type = getattr(config, "model_type", None)
    if model_type not in LLAVA_FAMILY:
        raise ModelUnavailableError(
            f"'{model_id}' is a '{model_type}' model, not a LLaVA-family model",
            hint=f"supported model types: {', '.join(LLAVA_FAMILY)}",
        )
    return model_type


def _quantization_config(quantize: str, dtype):
    from transformers import BitsAndBytesConfig

    # The vision tower and projector are small and precision-sensitive; only the decoder is quantized.
    skip = [r".*vision_tower", r".*multi_modal_projector", "lm_head"]  # regexes, matched from the start
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip
    )


def hub_offline(offline: bool) -> bool:
    """Whether the hub may not be contacted: --offline, or HF_HUB_OFFLINE set in the environment."""
    return offline or os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "on", "yes", "true")


def _load_pretrained(model_id, *, revision, offline, device, dtype, quantize, attn, placement=None):
    import transformers
    from transformers import AutoConfig, AutoProcessor

    from .errors import EnvironmentProblem, ModelUnavailableError

    local = Path(model_id).is_dir()
    # Never run a checkpoint's own Python (an `auto_map` in its config): transformers would ask on
    # stdin, and a `yes |` pipe would answer for the user.
    hub = dict(revision=revision, local_files_only=offline or local, trust_remote_code=False)
    try:
        config = AutoConfig.from_pretrained(model_id, **hub)
    except (OSError, ValueError) as e:
        if local:
            where, hint = "this directory", "check that it holds a Hugging Face checkpoint (config.json)"
        elif hub_offline(offline):
            flag = "--offline" if offline else "HF_HUB_OFFLINE=1"
            where = f"the local Hugging Face cache ({flag}: the hub is not contacted)"
            hint = "download it once with network access, or check the id"
        else:
            where, hint = "the hub", "check the id; without network, pass --offline and use a model already in the cache"
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise ModelUnavailableError(
                f"'{model_id}' asks to run Python code shipped with the checkpoint (auto_map in its config)",
                hint="tokentrim never runs a checkpoint's own code; LLaVA-family models load without it",
            ) from None
        raise ModelUnavailableError(f"cannot load '{model_id}' from {where}: {str(e).splitlines()[0]}", hint=hint) from None
    model_type = _check_family(config, model_id)  # before any weights are fetched
    model_class = getattr(transformers, LLAVA_FAMILY[model_type])
    kwargs = dict(dtype=dtype, attn_implementation=attn, **hub)
    if quantize != "none":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise EnvironmentProblem(f"--quantize {quantize} needs bitsandbytes: {e}") from None
        kwargs["quantization_config"] = _quantization_config(quantize, dtype)
        kwargs["device_map"] = {"": device}
    kwargs |= placement or {}
    try:
        model = model_class.from_pretrained(model_id, **kwargs)
        processor = AutoProcessor.from_pretrained(model_id, **hub)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many ways; memory is not one of them
        if type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):
            raise
        raise ModelUnavailableError(f"cannot load '{model_id}': {_weights_problem(e)}") from None
    if quantize == "none" and not placement:
        model = model.to(device)
    revision_used = "local" if local else (getattr(config, "_commit_hash", None) or revision or "unknown")
    return model, processor, revision_used, model_type


def _weights_problem(e: Exception) -> str:
    """One line saying why a checkpoint's files did not load."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "weights_only" in str(e) or type(e).__name__ == "UnpicklingError":
        return ("its weights are a pickle that torch refuses to load safely (weights_only); "
                "tokentrim never unpickles arbitrary objects: convert the checkpoint to safetensors")  # fmt: skip
    if type(e).__name__ == "SafetensorError" or "safetensors" in text.lower() or "header" in text.lower():
        return f"its safetensors file is corrupt or truncated ({text})"
    return f"{type(e).__name__}: {text}"


def _reload_random(model, quantize: str, device: str, dtype, attn: str, placement: dict):
    """bitsandbytes quantizes and accelerate places weights at load time, so random weights take a
    round trip through a temporary folder."""
    model_class = type(model)
    kwargs = dict(dtype=dtype, attn_implementation=attn, device_map={"": device})
    if quantize != "none":
        kwargs["quantization_config"] = _quantization_config(quantize, dtype)
    kwargs |= placement
    import shutil
    import weakref

    tmp = tempfile.mkdtemp(prefix="tokentrim-random-")
    try:
        model.save_pretrained(tmp)
        del model
        loaded = model_class.from_pretrained(tmp, **kwargs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Disk-offloaded layers may read their weights from the saved files: they live as long as the model.
    weakref.finalize(loaded, shutil.rmtree, tmp, True)
    return loaded


def quiet_libraries(*, download_progress: bool = False) -> None:
    """Silence transformers' progress bars and info logs, and bitsandbytes' chatter.

    For command-line use, where stderr belongs to tokentrim's own spinner and summary lines.
    `download_progress` keeps huggingface_hub's download bars (transformers' switch turns them off
    too): a first download of a 7B checkpoint must show that it is moving.
    """
    import logging
    import warnings

    from huggingface_hub import utils as hub_utils
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if download_progress:
        hub_utils.enable_progress_bars()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # its retry chatter; the final error is ours to report
    # bitsandbytes logs through `logging` (hundreds of lines for 8-bit on CPU, a kernels notice for
    # 4-bit), which a warnings filter does not catch; errors still show.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # It also warns on every 8-bit matmul that fp32 inputs are cast to fp16: expected, not news.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    warnings.filterwarnings("ignore", module="bitsandbytes")


def needs_download_progress(model_id: str, *, offline: bool) -> bool:
    """Whether loading may download from the hub (then a spinner would fight the download bars)."""
    if model_id.startswith((BUILTIN_PREFIX, "random:")) or Path(model_id).is_dir():
        return False
    return not hub_offline(offline)


def shape_table() -> list[tuple[str, str]]:
    """(name, description) of every random shape, for `tokentrim env` and help texts."""
    return [(f"random:{name}", shape.description) for name, shape in SHAPES.items()]


# ---- built-in models -----------------------------------------------------------------------------

BUILTIN_PREFIX = "builtin:"
# The old easy-VQA demo model trained here from scratch (scripts/train_demo_model.py): an ordinary
# checkpoint directory shipped inside the package. Kept for the easy-VQA history in benchmarks/.
DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"
BUILTIN_MODELS = {
    "builtin:scenes": "DINOv2 ViT-S/14 + SmolLM2-135M-Instruct, projector and LoRA trained here on synthetic "
                      "scenes (576 visual tokens, 30 layers); assembled on first use (tokentrim_cli/assembly.py)",
    "builtin:easy-vqa": "the earlier 2.1 M-parameter demo model: one coloured shape on a 64x64 picture, "
                        "easy-VQA questions, one-word answers (256 visual tokens, 32 layers)",
}  # fmt: skip
DEFAULT_MODEL = "builtin:scenes"
MODEL_NOTES = {
    "builtin:scenes": "builtin:scenes was trained only on synthetic scenes of 3-8 coloured shapes "
                      "(tokentrim_cli/scenes.py); it does not understand photographs. Use -m for a real checkpoint.",
    "builtin:easy-vqa": "builtin:easy-vqa knows one coloured circle, rectangle or triangle on a plain picture, nothing else.",
}  # fmt: skip


def default_model_id() -> str:
    """$TOKENTRIM_MODEL, else the built-in scenes model."""
    return os.environ.get("TOKENTRIM_MODEL") or DEFAULT_MODEL


def model_note(model_id: str) -> str | None:
    """What a built-in model was trained on, to say once when it is used."""
    return MODEL_NOTES.get(model_id)


def builtin_directory(model_id: str, *, progress=None) -> Path:
    from .errors import ModelUnavailableError

    if model_id == "builtin:easy-vqa":
        return DEMO_MODEL
    if model_id == "builtin:scenes":
        from .assembly import ensure_assembled

        return ensure_assembled(progress)
    raise ModelUnavailableError(f"unknown built-in model '{model_id}'", hint=f"built-in models: {', '.join(BUILTIN_MODELS)}")


def builtin_revision(model_id: str, directory: Path) -> str:
    """What a calibrated profile ties itself to: the assembly's fingerprint, or "local"."""
    if model_id == "builtin:scenes":
        return "scenes-" + directory.name.removeprefix("scenes-")
    return "local"


def peek_layers(model_id: str, *, revision: str | None = None, offline: bool = False) -> tuple[str, int] | None:
    """(model type, decoder layers) from the configuration alone, without loading weights: a profile
    that does not fit is refused in a second, not after loading 14 GB. None when it cannot be read
    cheaply (then the check happens after loading)."""
    if model_id.startswith("random:"):
        shape = SHAPES.get(model_id.split(":", 1)[1])
        return (shape.model_type, shape.text["num_hidden_layers"]) if shape else None
    if model_id == "builtin:scenes":
        from .assembly import TEXT_LAYERS

        return "llava", TEXT_LAYERS
    directory = DEMO_MODEL if model_id == "builtin:easy-vqa" else None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            str(directory or model_id), revision=revision, trust_remote_code=False,
            local_files_only=offline or directory is not None or Path(model_id).is_dir(),
        )  # fmt: skip
        return config.model_type, config.text_config.num_hidden_layers
    except Exception:  # noqa: BLE001 - the full load reports the real problem
        return None
