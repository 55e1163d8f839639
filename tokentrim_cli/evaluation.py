"""Quality of trimming profiles on an evaluation set, side by side (the sets: benchmarks.py).

Every profile answers the same samples (greedy, batched with left padding) through the one
generation path; the first profile is the reference for retention (score relative to it) and
agreement (same normalised answer). Visual tokens (input and layer-averaged budgets) and decoder
prefill FLOPs come from the engine's trace.

Runs can be resumed: with an output folder, each profile's finished samples are kept in
`<folder>/<profile>.jsonl` (rewritten atomically after every batch) beside `run.json` (what the run
is); an interrupted run picks up where it stopped. Runs can be sharded: each process of an
`accelerate launch` answers samples i with i % world == rank, and the main process gathers them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .benchmarks import (  # noqa: F401  (re-exported: the library's evaluation API)
    BENCHMARKS, EvalSample, EvalSet, Summary, exact_match, get_benchmark, load_easy_vqa, load_jsonl, load_named,
    normalize, sample_indices,
)  # fmt: skip
from .errors import InputError, UsageError


@dataclass
class Record:
    """One profile's answer to one sample, with what the engine did."""

    id: str
    prediction: str
    visual_input: int
    layer_averaged: float
    after_pruning: float
    prefill_flops: int


@dataclass
class ProfileScores:
    name: str
    sha256: str
    records: list[Record] = field(default_factory=list)  # in the evaluation set's order
    summary: Summary | None = None
    correct: list[float] = field(default_factory=list)  # per-sample score in [0, 1]
    seconds: float = 0.0  # this process's answering time: resumed samples took theirs in an earlier run
    resumed: int = 0  # samples whose answers came from --output-dir, answered by an earlier run

    @property
    def predictions(self) -> list[str]:
        return [r.prediction for r in self.records]

    @property
    def accuracy(self) -> float:
        """The benchmark's headline score (for MME the summed score, otherwise in [0, 1])."""
        return self.summary.score if self.summary else 0.0


@dataclass
class EvalReport:
    rows: list[ProfileScores]
    dataset: str
    dataset_sha256: str
    benchmark: str
    samples: int
    skipped: list[str]  # ids of samples whose image could not be decoded (--skip-bad)
    settings: dict
    provenance: dict

    @property
    def reference(self) -> ProfileScores:
        return self.rows[0]

    @property
    def score_name(self) -> str:
        return self.reference.summary.score_name if self.reference.summary else "accuracy"

    def retention(self, row: ProfileScores) -> float | None:
        """The headline score as a share of the reference's (None when the reference scored zero)."""
        return row.accuracy / self.reference.accuracy if self.reference.accuracy else None

    def agreement(self, row: ProfileScores) -> float:
        pairs = zip(row.predictions, self.reference.predictions)
        return sum(normalize(a) == normalize(b) for a, b in pairs) / max(1, self.samples)

    def flops_ratio(self, row: ProfileScores) -> float:
        reference = sum(r.prefill_flops for r in self.reference.records)
        return sum(r.prefill_flops for r in row.records) / reference if reference else 1.0

    def mean(self, row: ProfileScores, attribute: str) -> float:
        values = [getattr(r, attribute) for r in row.records]
        return sum(values) / len(values) if values else 0.0


# ---- the resumable store -------------------------------------------------------------------------------


class Store:
    """Finished records per profile in an output folder (None: kept in memory only)."""

    def __init__(self, folder: str | None, description: dict) -> None:
        self.folder = Path(folder) if folder else None
        self.description = description
        if self.folder is None:
            return
        from .files import check_writable, write_text_atomic

        marker = self.folder / "run.json"
        if marker.is_file():
            try:
                existing = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InputError(f"{marker}: unreadable ({e}); remove the folder to start afresh") from None
            changed = sorted(k for k in set(existing) | set(description) if k != "profiles" and existing.get(k) != description.get(k))
            before = existing.get("profiles", {})
            changed += [f"profile {name}" for name, digest in description["profiles"].items() if before.get(name, digest) != digest]
            if changed:
                raise UsageError(f"--output-dir {folder} holds another run (it differs in {', '.join(changed)})",
                                 hint="use a new folder, or the same settings to resume that run")  # fmt: skip
            # Same samples and settings: profiles may be added (or left out); finished ones are reused.
            description = {**description, "profiles": {**before, **description["profiles"]}}
            if description != existing:
                write_text_atomic(marker, json.dumps(description, indent=2) + "\n")
        else:
            check_writable(marker)
            write_text_atomic(marker, json.dumps(description, indent=2) + "\n")

    def _path(self, profile: str) -> Path:
        slug = "".join(c if c.isalnum() or c in "-._" else "-" for c in profile)
        return self.folder / f"{slug}.jsonl"

    def load(self, profile: str) -> dict[str, Record]:
        if self.folder is None or not self._path(profile).is_file():
            return {}
        records = {}
        for line in self._path(profile).read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = Record(**json.loads(line))
                records[record.id] = record
        return records

    def save(self, profile: str, records: dict[str, Record]) -> None:
        if self.folder is None:
            return
        from .files import write_text_atomic

        text = "".join(json.dumps(r.__dict__) + "\n" for r in records.values())
        write_text_atomic(self._path(profile), text)


# ---- running ----------------------------------------------------------------------------------------------


def _load_batch(batch: list[EvalSample], skip_bad: bool, skipped: set[str]) -> list[tuple[EvalSample, list]]:
    """(sample, images) for every sample of the batch whose image decodes; a bad one is an
    InputError naming it, or (skip_bad) left out and remembered."""
    loaded = []
    for sample in batch:
        if sample.id in skipped:
            continue
        try:
            images = [sample.image.load()] if sample.image is not None else []
        except InputError as e:
            if not skip_bad:
                raise InputError(f"sample {sample.id}: {e}", hint="--skip-bad leaves such samples out and goes on") from None
            skipped.add(sample.id)
            continue
        loaded.append((sample, images))
    return loaded


def _batches_by_cap(samples: list[EvalSample], cap: Callable[[EvalSample], int], size: int) -> list[list[EvalSample]]:
    """Batches of at most `size` samples that share an answer cap (in order within a cap)."""
    groups: dict[int, list[EvalSample]] = {}
    for sample in samples:
        groups.setdefault(cap(sample), []).append(sample)
    return [group[i : i + size] for _, group in sorted(groups.items()) for i in range(0, len(group), size)]


def evaluate(
    loaded,
    profiles: list,
    evalset: EvalSet,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    output_dir: str | None = None,
    skip_bad: bool = False,
    shard=None,
    on_skip: Callable[[str], None] | None = None,
) -> EvalReport:
    """Answer every sample with every profile (greedy) and score the answers.

    `shard`: a distributed.Shard (rank, world, gather); None for one process."""
    from .distributed import Shard
    from .generation import answer_batch
    from .metrics import prefill_flops, provenance
    from .profiles import check_fits

    benchmark = BENCHMARKS[evalset.benchmark]
    given_cap = max_new_tokens  # --max-new-tokens: every answer's cap, overriding the samples' own
    max_new_tokens = max_new_tokens or max((s.max_new_tokens or benchmark.max_new_tokens for s in evalset.samples),
                                           default=benchmark.max_new_tokens)  # fmt: skip

    def cap(sample: EvalSample) -> int:
        return given_cap or sample.max_new_tokens or benchmark.max_new_tokens
    shard = shard or Shard.single()
    info, text = loaded.info, loaded.model.config.text_config
    for profile in profiles:
        check_fits(profile, model_id=info.model_id, model_type=info.model_type, num_layers=info.num_layers)
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
    description = {"dataset": evalset.name, "dataset_sha256": evalset.sha256, "model": info.model_id,
                   "revision": info.revision, "dtype": info.dtype, "max_new_tokens": max_new_tokens,
                   "profiles": {p.name: p.sha256 for p in profiles}}  # fmt: skip
    store = Store(output_dir if shard.is_main else None, description)
    shard.barrier()  # run.json checked by the main process before anyone writes
    mine = [s for i, s in enumerate(evalset.samples) if i % shard.world == shard.rank]
    skipped: set[str] = set()
    rows, done = [], 0
    total = len(profiles) * len(evalset.samples)
    for profile in profiles:
        records = store.load(profile.name) if shard.is_main else {}
        records = shard.broadcast(records)
        resumed = len(records)
        done += resumed  # finished in an earlier, interrupted run
        started = time.perf_counter()
        batches = _batches_by_cap([s for s in mine if s.id not in records], cap, batch_size)
        for batch in shard.padded(batches):
            ready = _load_batch(batch, skip_bad, skipped) if batch else []
            if ready:
                answers, trace = answer_batch(loaded, profile, [(images, s.prompt) for s, images in ready],
                                              max_new_tokens=max(cap(s) for s, _ in ready))  # fmt: skip
                for b, ((sample, _), answer) in enumerate(zip(ready, answers)):
                    records[sample.id] = Record(
                        sample.id, answer, trace.visual_input[b], trace.layer_averaged[b], trace.layer_averaged_after_pruning[b],
                        prefill_flops(trace.tokens_per_layer[b], hidden=text.hidden_size, intermediate=text.intermediate_size),
                    )  # fmt: skip
                store.save(profile.name, records)
            done = shard.total_done(done, len(batch))  # every process's work: the whole run's progress
            if progress and shard.is_main:
                progress(done, total)
        records = shard.gather_records(records)
        skipped = shard.gather_skipped(skipped)
        row = ProfileScores(profile.name, profile.sha256)
        row.seconds = shard.max_seconds(time.perf_counter() - started)
        row.resumed = resumed
        rows.append((row, records))
        if shard.is_main:
            store.save(profile.name, records)
    for sample_id in sorted(skipped):
        if on_skip and shard.is_main:
            on_skip(sample_id)
    kept = [s for s in evalset.samples if s.id not in skipped]
    for row, records in rows:
        row.records = [records[s.id] for s in kept]
        row.summary = benchmark.summarize(row.predictions, kept)
        row.correct = [benchmark.correct(p, s) for p, s in zip(row.predictions, kept)]
    return EvalReport(
        rows=[row for row, _ in rows], dataset=evalset.name, dataset_sha256=evalset.sha256, benchmark=evalset.benchmark,
        samples=len(kept), skipped=sorted(skipped), settings=settings | {"processes": shard.world},
        provenance=provenance(info),
    )  # fmt: skip

