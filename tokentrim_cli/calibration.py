"""Calibration: measure how far trimming moves the next-token distribution, and pick a setting.

VTW (methods.md §1.3): for each sample, the full prefill's next-token distribution P_full at the
last prompt position; for each candidate K, the same with the visual tokens withdrawn before layer
K, P_K; score KL(P_K || P_full) in fp32 (the reference's direction), average over samples, and take
the smallest K whose mean KL <= eta. If none qualifies, K = L (no withdrawal), with a warning.
The layers before K are shared by every candidate, so one stock prefill per sample is captured
and only layers K..L-1 rerun, on the text tokens alone.

Other methods (`--kl-budget`): the most aggressive setting of the method's main knob (FastV's and
ST3's prune ratio, MustDrop's threshold preset) whose mean first-token KL stays within the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import InputError, UsageError
from .inputs import ImageRef, read_image_records

BUILTIN_DATASET = "built-in (20 scenes of coloured shapes with short questions, tokentrim_cli/scenes.py, seeds 500000-500019)"
KL_METRIC = "KL(P_trimmed || P_full) of the next-token distribution at the last prompt position, fp32"
# VTW's thresholds per checkpoint in the reference code (methods.md §1.3); others get the 7B's.
VTW_ETA = {
    "llava-hf/llava-1.5-7b-hf": 0.003,
    "liuhaotian/llava-v1.5-7b": 0.003,
    "llava-hf/llava-1.5-13b-hf": 0.0005,
    "liuhaotian/llava-v1.5-13b": 0.0005,
    "llava-hf/llava-v1.6-vicuna-7b-hf": 0.0001,
    "liuhaotian/llava-v1.6-vicuna-7b": 0.0001,
}
VTW_DEFAULT_ETA = 0.003
REFERENCE_SET_NOTE = (
    "the reference calibrates on the first 20 ScienceQA-IMG samples (lmms-eval's order); this set differs, "
    "so K may differ from the published one"
)


def vtw_eta(model_id: str) -> tuple[float, str]:
    """(eta, where it comes from) for a checkpoint: the reference's value when known."""
    if model_id in VTW_ETA:
        return VTW_ETA[model_id], f"the reference's value for {model_id}"
    return VTW_DEFAULT_ETA, "the reference's default (its LLaVA-1.5-7B value): no value is known for this checkpoint"


@dataclass
class Sample:
    image: ImageRef  # decoded when used
    prompt: str


@dataclass
class Dataset:
    samples: list[Sample]
    name: str
    sha256: str  # over the JSONL text and every image's bytes


@dataclass
class CalibrationResult:
    method: str
    params: dict  # the chosen parameters
    knob: str  # the parameter searched
    chosen: float  # its chosen value (MustDrop: the preset's layer-averaged budget; 0 = the no-trim fallback)
    curve: list[tuple[float, float]]  # (knob value, mean KL) for every candidate
    threshold: float  # eta (VTW) or the KL budget
    qualified: bool  # False: nothing met the threshold; params are the fallback
    samples: int
    seconds: float
    per_sample: list[list[float]] = field(default_factory=list)  # [sample][candidate]
    notes: list[str] = field(default_factory=list)  # where eta came from, how the data differs from the reference


# ---- data -----------------------------------------------------------------------------------------


def load_dataset(data: str | None, *, limit: int | None = None) -> Dataset:
    """The JSONL file `data` (lines {"image", "prompt"}; relative images resolve against the file),
    or the built-in set. Raises InputError naming the file and line."""
    if data is None:
        return builtin_dataset(limit)
    options = dict(valid=lambda r: isinstance(r.get("prompt"), str), expected='{"image": "...", "prompt": "..."}', limit=limit)
    pairs, sha256 = read_image_records(data, **options)
    return Dataset(samples=[Sample(image, record["prompt"]) for record, image in pairs], name=data, sha256=sha256)


def builtin_dataset(limit: int | None = None) -> Dataset:
    """20 scenes with one short-answer question each (scenes.calibration_samples), drawn here; the
    hash covers the questions and every picture's pixels, so a change in the drawing shows."""
    import hashlib

    from . import scenes

    chosen = scenes.calibration_samples()[: limit or None]
    digest = hashlib.sha256()
    samples = []
    for sample in chosen:
        image = scenes.SceneImage(sample.seed)
        digest.update(f"{sample.seed}\n{sample.question.prompt}\n".encode())
        digest.update(image.load().image.tobytes())
        samples.append(Sample(image, sample.question.prompt))
    return Dataset(samples=samples, name=BUILTIN_DATASET, sha256=digest.hexdigest())


# ---- pure arithmetic ------------------------------------------------------------------------------


def kl_divergence(trimmed_logits, full_logits) -> float:
    """KL(P_trimmed || P_full) over the vocabulary, in fp32 (methods.md §1.3: the reference's direction)."""
    import torch

    log_p = torch.log_softmax(trimmed_logits.float(), dim=-1)
    log_q = torch.log_softmax(full_logits.float(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def choose_vtw_layer(curve: list[tuple[int, float]], eta: float, num_layers: int) -> tuple[int, bool]:
    """The smallest K whose mean KL <= eta, and True; or (num_layers, False) when none qualifies."""
    for layer, kl in sorted(curve):
        if kl <= eta:
            return layer, True
    return num_layers, False


def choose_most_aggressive(curve: list[tuple[float, float]], budget: float) -> tuple[float | None, bool]:
    """The last knob value (the curve runs from mild to aggressive) whose KL is within the budget."""
    chosen = None
    for value, kl in curve:
        if kl <= budget:
            chosen = value
    return chosen, chosen is not None


# ---- measurement ----------------------------------------------------------------------------------

Progress = Callable[[int, int], None]  # (done, total)


def default_min_layer(num_layers: int) -> int:
    """The reference searches K from 5 on a 32-layer model; keep that share of the depth."""
    return max(1, round(5 * num_layers / 32))


def _per_sample(dataset: Dataset, row, progress: Progress | None, shard) -> list[list[float]]:
    """row(sample) for every sample, in order; with several processes each computes the samples
    i % world == rank and all gather the rows (the progress counts everybody's)."""
    from .distributed import Shard

    shard = shard or Shard.single()
    mine = [(i, sample) for i, sample in enumerate(dataset.samples) if i % shard.world == shard.rank]
    rows, done = [], 0
    for item in shard.padded([[pair] for pair in mine]):
        for index, sample in item:
            rows.append((index, row(sample)))
        done = shard.total_done(done, len(item))
        if progress and shard.is_main:
            progress(done, len(dataset.samples))
    return [values for _, values in sorted(shard.gather_list(rows))]


def calibrate_vtw(loaded, dataset: Dataset, *, eta: float, min_layer: int | None = None, progress: Progress | None = None,
                  shard=None) -> CalibrationResult:  # fmt: skip
    """VTW's withdrawal layer by the KL criterion, with the shared-prefix evaluation."""
    from .engine.withdrawal import capture_layer_inputs, logits_after_withdrawal
    from .generation import prepare_inputs

    if eta <= 0:
        raise InputError(f"eta must be > 0, got {eta}")
    num_layers = loaded.info.num_layers
    min_layer = default_min_layer(num_layers) if min_layer is None else min_layer
    if not 1 <= min_layer <= num_layers - 1:
        raise UsageError(f"--min-layer must be in [1, {num_layers - 1}] for this model, got {min_layer}")
    candidates = list(range(min_layer, num_layers))
    started = time.perf_counter()

    def row(sample: Sample) -> list[float]:
        captured = capture_layer_inputs(loaded.model, prepare_inputs(loaded, [sample.image.load()], sample.prompt))
        return [kl_divergence(logits_after_withdrawal(loaded.model, captured, layer), captured.logits) for layer in candidates]

    per_sample = _per_sample(dataset, row, progress, shard)
    curve = [(layer, sum(col) / len(col)) for layer, col in zip(candidates, zip(*per_sample))]
    chosen, qualified = choose_vtw_layer(curve, eta, num_layers)
    return CalibrationResult(
        method="vtw", params={"layer": chosen}, knob="layer", chosen=chosen, curve=curve, threshold=eta,
        qualified=qualified, samples=len(dataset.samples), seconds=time.perf_counter() - started, per_sample=per_sample,
    )  # fmt: skip


def calibrate_vtw_naive(loaded, dataset: Dataset, *, eta: float, min_layer: int) -> CalibrationResult:
    """The same KL curve with one full trimmed prefill per candidate (the reference's way): the
    yardstick for the shared-prefix version, in tests and the speed-up measurement."""
    from .methods.vtw import VTW, VTWConfig

    started = time.perf_counter()
    candidates = list(range(min_layer, loaded.info.num_layers))
    per_sample = []
    for sample in dataset.samples:
        full = _last_logits(loaded, sample, None)
        per_sample.append([kl_divergence(_last_logits(loaded, sample, VTW(VTWConfig(layer=k))), full) for k in candidates])
    curve = [(layer, sum(col) / len(col)) for layer, col in zip(candidates, zip(*per_sample))]
    chosen, qualified = choose_vtw_layer(curve, eta, loaded.info.num_layers)
    return CalibrationResult(
        method="vtw", params={"layer": chosen}, knob="layer", chosen=chosen, curve=curve, threshold=eta,
        qualified=qualified, samples=len(dataset.samples), seconds=time.perf_counter() - started, per_sample=per_sample,
    )  # fmt: skip


def _last_logits(loaded, sample: Sample, method):
    """The next-token logits at the end of the prompt, with `method` applied (None: stock)."""
    from .generation import first_token_logits
    from .profiles import Profile

    profile = None if method is None else Profile(name=method.name, description="", method=method.name, params=method.config)
    return first_token_logits(loaded, profile, [sample.image.load()], sample.prompt)


def knob_candidates(method: str, num_layers: int) -> tuple[str, list[tuple[float, object]]]:
    """(knob name, [(knob value, method instance)]) from mild to aggressive, from what the method
    declares it may tune (`Method.calibration`); the other parameters are its defaults (scaled to
    the model's depth where the defaults do not fit it)."""
    import dataclasses

    from .methods import calibratable, get_method

    if method not in calibratable():
        raise UsageError(f"'{method}' declares nothing to calibrate; calibratable: {', '.join(sorted(calibratable()))}")
    method_class = get_method(method)
    knob = method_class.calibration
    if knob.search != "kl_budget":
        raise UsageError(f"--method {method} is calibrated with its own criterion (--eta), not --kl-budget")
    base = method_class.config_cls()
    try:
        base.check_model(num_layers)
    except Exception:  # noqa: BLE001 - depth-dependent defaults: the method's own scaled setting
        base = method_class.config_cls.example(num_layers)
    return knob.name, [(value, method_class(dataclasses.replace(base, **knob.params(value)))) for value in knob.values]


def calibrate_knob(loaded, dataset: Dataset, *, method: str, kl_budget: float, progress: Progress | None = None,
                   shard=None) -> CalibrationResult:  # fmt: skip
    """The most aggressive setting of the method's main knob whose mean first-token KL is within budget."""
    if kl_budget <= 0:
        raise InputError(f"--kl-budget must be > 0, got {kl_budget}")
    knob, candidates = knob_candidates(method, loaded.info.num_layers)
    for _, instance in candidates:
        instance.config.check_model(loaded.info.num_layers)
    started = time.perf_counter()

    def row(sample: Sample) -> list[float]:
        full = _last_logits(loaded, sample, None)
        return [kl_divergence(_last_logits(loaded, sample, instance), full) for _, instance in candidates]

    per_sample = _per_sample(dataset, row, progress, shard)
    curve = [(value, sum(col) / len(col)) for (value, _), col in zip(candidates, zip(*per_sample))]
    chosen, qualified = choose_most_aggressive(curve, kl_budget)
    if qualified:
        params = next(instance for value, instance in candidates if value == chosen).config.to_dict()
    else:  # even the mildest setting moves the distribution too far: trim nothing
        chosen = 0.0
        params = type(candidates[0][1].config).neutral(loaded.info.num_layers).to_dict()
    return CalibrationResult(
        method=method, params=params, knob=knob, chosen=chosen, curve=curve, threshold=kl_budget,
        qualified=qualified, samples=len(dataset.samples), seconds=time.perf_counter() - started, per_sample=per_sample,
    )  # fmt: skip


def calibrated_profile(result: CalibrationResult, info, dataset: Dataset, *, version: str):
    """The trimming profile a calibration writes: the chosen parameters plus where they came from."""
    import datetime

    from .methods import get_method
    from .profiles import Profile

    slug = model_slug(info.model_id)
    description = f"{result.method} calibrated on {info.model_id}: {result.knob} = {result.chosen}"
    if result.method == "vtw":
        description = f"VTW calibrated on {info.model_id}: withdraw the visual tokens before layer {result.chosen}"
    if not result.qualified:
        description += " (nothing met the threshold: fallback, see [calibration])"
    calibration = {
        "dataset": dataset.name,
        "dataset_hash": f"sha256:{dataset.sha256}",
        "samples": result.samples,
        "metric": KL_METRIC,
        ("threshold" if result.method == "vtw" else "kl_budget"): result.threshold,
        "curve": [[value, kl] for value, kl in result.curve],
        "chosen": result.chosen,
        **({"notes": result.notes} if result.notes else {}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": version,
        "model_id": info.model_id,
        "model_revision": info.revision,
    }
    return Profile(
        name=f"{result.method}-{slug}",
        description=description,
        method=result.method,
        params=get_method(result.method).config_cls.from_dict(result.params),
        position_policy="keep",
        applies_to={"models": [info.model_id], "revision": info.revision},
        calibration=calibration,
    )


def model_slug(model_id: str) -> str:
    """A file-name-safe short name: 'llava-hf/llava-1.5-7b-hf' -> 'llava-1.5-7b-hf'."""
    tail = model_id.rstrip("/").split("/")[-1].replace("random:", "random-")
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in tail) or "model"

