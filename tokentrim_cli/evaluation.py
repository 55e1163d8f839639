"""Quality of trimming profiles: exact-match accuracy on question/answer data, side by side.

Every profile answers the same samples (greedy, batched with left padding); the first profile is
the reference for retention (accuracy relative to it) and agreement (same normalised answer).
Visual tokens (input and layer-averaged budgets) and decoder prefill FLOPs come from the trace.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import EnvironmentProblem, UsageError
from .inputs import ImageRef, read_image_records


@dataclass
class EvalSample:
    image: ImageRef | None  # decoded when its batch runs; None for a text-only sample
    prompt: str
    answers: list[str]  # any of them counts as correct


@dataclass
class EvalSet:
    samples: list[EvalSample]
    name: str
    sha256: str


def normalize(text: str) -> str:
    """Case, surrounding and repeated whitespace, and a final period do not count."""
    return re.sub(r"\s+", " ", text).strip().lower().removesuffix(".").strip()


def exact_match(prediction: str, answers: list[str]) -> bool:
    return normalize(prediction) in {normalize(a) for a in answers}


# ---- data -----------------------------------------------------------------------------------------


def load_jsonl(path: str, *, limit: int | None = None) -> EvalSet:
    """{"image": PATH|URL, "prompt": ..., "answer": str | [str, ...]} per line; relative image
    paths resolve against the file. Raises InputError naming the file and line."""

    def valid(record: dict) -> bool:
        answers = _answers(record)
        return isinstance(record.get("prompt"), str) and bool(answers) and all(isinstance(a, str) for a in answers)

    pairs, sha256 = read_image_records(
        path, valid=valid, expected='{"image": "...", "prompt": "...", "answer": "..." or [...]}', limit=limit,
        image_optional=True,
    )
    samples = [EvalSample(image=image, prompt=record["prompt"], answers=_answers(record)) for record, image in pairs]
    return EvalSet(samples=samples, name=path, sha256=sha256)


def _answers(record: dict):
    answers = record.get("answer")
    return [answers] if isinstance(answers, str) else answers if isinstance(answers, list) else None


def sample_indices(total: int, *, limit: int | None, seed: int) -> list[int]:
    """The question indices of a seeded sample, ascending (all of them without a limit)."""
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), limit))


def load_easy_vqa(split: str, *, limit: int | None, seed: int) -> EvalSet:
    """A fixed, seeded sample of easy-VQA's questions (PyPI `easy-vqa`, MIT)."""
    try:
        import easy_vqa
    except ImportError:
        raise EnvironmentProblem("--dataset easy-vqa needs the easy-vqa package", hint="pip install easy-vqa") from None
    if split not in ("train", "test"):
        raise UsageError(f"--split must be train or test, got '{split}'")
    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    order = sample_indices(len(questions), limit=limit, seed=seed)
    samples = [EvalSample(ImageRef(paths[image_ids[i]], f"easy-vqa {split} question {i}"), questions[i], [answers[i]])
               for i in order]  # fmt: skip
    digest = hashlib.sha256(json.dumps([split, seed, order]).encode())
    return EvalSet(samples=samples, name=f"easy-vqa {split} ({len(samples)} of {len(questions)}, seed {seed})", sha256=digest.hexdigest())


# ---- running ----------------------------------------------------------------------------------------


@dataclass
class ProfileScores:
    name: str
    sha256: str
    predictions: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    visual_input: list[int] = field(default_factory=list)
    visual_layer_averaged: list[float] = field(default_factory=list)
    prefill_flops: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)


@dataclass
class EvalReport:
    rows: list[ProfileScores]
    dataset: str
    dataset_sha256: str
    samples: int
    settings: dict
    provenance: dict

    @property
    def reference(self) -> ProfileScores:
        return self.rows[0]

    def retention(self, row: ProfileScores) -> float | None:
        """Accuracy as a share of the reference's (None when the reference scored zero)."""
        return row.accuracy / self.reference.accuracy if self.reference.accuracy else None

    def agreement(self, row: ProfileScores) -> float:
        pairs = zip(row.predictions, self.reference.predictions)
        return sum(normalize(a) == normalize(b) for a, b in pairs) / self.samples

    def flops_ratio(self, row: ProfileScores) -> float:
        return sum(row.prefill_flops) / sum(self.reference.prefill_flops)


def evaluate(
    loaded,
    profiles: list,
    evalset: EvalSet,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Answer every sample with every profile (greedy) and score the answers."""
    from .generation import answer_batch
    from .metrics import prefill_flops, provenance
    from .profiles import check_fits

    info, text = loaded.info, loaded.model.config.text_config
    for profile in profiles:
        check_fits(profile, model_id=info.model_id, model_type=info.model_type, num_layers=info.num_layers)
    rows, done = [], 0
    total = len(profiles) * len(evalset.samples)
    for profile in profiles:
        row = ProfileScores(profile.name, profile.sha256)
        started = time.perf_counter()
        for start in range(0, len(evalset.samples), batch_size):
            batch = evalset.samples[start : start + batch_size]
            requests = [([s.image.load()] if s.image else [], s.prompt) for s in batch]
            texts, trace = answer_batch(loaded, profile, requests, max_new_tokens=max_new_tokens)
            for b, (sample, prediction) in enumerate(zip(batch, texts)):
                row.predictions.append(prediction)
                row.correct.append(exact_match(prediction, sample.answers))
                row.visual_input.append(trace.visual_input[b])
                row.visual_layer_averaged.append(trace.layer_averaged[b])
                row.prefill_flops.append(
                    prefill_flops(trace.tokens_per_layer[b], hidden=text.hidden_size, intermediate=text.intermediate_size)
                )
            done += len(batch)
            if progress:
                progress(done, total)
        row.seconds = time.perf_counter() - started
        rows.append(row)
    return EvalReport(
        rows=rows, dataset=evalset.name, dataset_sha256=evalset.sha256, samples=len(evalset.samples),
        settings={"batch_size": batch_size, "max_new_tokens": max_new_tokens}, provenance=provenance(info),
    )  # fmt: skip
