"""Which short answers two scenes evaluations disagree on, and whether the difference is more than
noise: McNemar's test, per question type. Readings of two `tokentrim eval --dataset scenes` results
(nothing is run).

    python benchmarks/paired_comparison.py OLD.json NEW.json
    python benchmarks/paired_comparison.py \\
        <(git show c21f4a1^:benchmarks/results/eval-scenes-full-cpu.json) \\
        benchmarks/results/eval-scenes-full-cpu.json

Two sets of weights answering the same questions are paired data: a question both get right or
both get wrong says nothing about which is better, so two accuracies a point apart on 2,057
questions can be a real gain or noise depending on how many answers changed. This joins the two
results' answers question by question (by the sample ids `eval` writes), counts the questions
right in one and wrong in the other, and gives McNemar's statistic z = (new - old) / sqrt(new +
old) over those discordant questions, with the exact two-sided binomial p-value. Describe answers
are scored by recall, not right or wrong, and are left out.

Both files must be evaluations of the same questions (the same dataset digest), and each must hold
the profile named by `--profile` (default: baseline). Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokentrim_cli import scenes  # noqa: E402
from tokentrim_cli.benchmarks import scenes_question  # noqa: E402


def mcnemar(only_old: int, only_new: int) -> tuple[float, float]:
    """McNemar's z (positive when the new answers more) and the exact two-sided p-value: under no
    difference each discordant question is a fair coin's toss between the two."""
    discordant = only_old + only_new
    if not discordant:
        return 0.0, 1.0
    z = (only_new - only_old) / math.sqrt(discordant)
    tail = sum(math.comb(discordant, k) for k in range(min(only_old, only_new) + 1))
    return z, min(1.0, 2 * tail / 2**discordant)


def answers(document: dict, profile: str, path: str) -> dict[str, float]:
    """The named profile's score per sample id."""
    for entry in document.get("profiles", []):
        if entry["profile"] == profile:
            return dict(zip(entry["ids"], entry["correct"], strict=True))
    names = ", ".join(entry["profile"] for entry in document.get("profiles", []))
    raise ValueError(f"{path}: no profile {profile!r} (it has: {names or 'none'})")


def paired_counts(old: dict[str, float], new: dict[str, float], types: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per short-answer type, and over all of them: questions right in both, in the old only, in the
    new only, in neither."""
    rows = {name: dict.fromkeys(("both", "only_old", "only_new", "neither"), 0) for name in ("short", *scenes.SHORT_TYPES)}
    for sample_id, kind in types.items():
        if kind not in scenes.SHORT_TYPES:
            continue
        was, now = old[sample_id] == 1.0, new[sample_id] == 1.0
        cell = "both" if was and now else "only_old" if was else "only_new" if now else "neither"
        rows[kind][cell] += 1
        rows["short"][cell] += 1
    return rows


def compare(old_path: str, new_path: str, profile: str = "baseline") -> dict[str, dict[str, int]]:
    documents = [json.loads(Path(p).read_text(encoding="utf-8")) for p in (old_path, new_path)]
    if documents[0].get("benchmark") != "scenes" or documents[1].get("benchmark") != "scenes":
        raise ValueError("both files must be `tokentrim eval --dataset scenes` results")
    if documents[0]["dataset_sha256"] != documents[1]["dataset_sha256"]:
        raise ValueError(f"not the same questions: {documents[0]['dataset']} and {documents[1]['dataset']}")
    old, new = (answers(d, profile, p) for d, p in zip(documents, (old_path, new_path)))
    if old.keys() != new.keys():
        raise ValueError(f"{old_path} and {new_path} do not answer the same questions")
    questions = scenes.evaluation_questions()
    types = {sample_id: scenes_question(sample_id, questions).question.type for sample_id in old}
    return paired_counts(old, new, types)


def markdown(rows: dict[str, dict[str, int]]) -> str:
    lines = ["| questions | count | right in both | only old | only new | neither | old acc | new acc | z | p |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        count = sum(row.values())
        if not count:
            continue
        z, p = mcnemar(row["only_old"], row["only_new"])
        old_acc = (row["both"] + row["only_old"]) / count
        new_acc = (row["both"] + row["only_new"]) / count
        lines.append(f"| {name} | {count} | {row['both']} | {row['only_old']} | {row['only_new']} | {row['neither']} "
                     f"| {old_acc:.1%} | {new_acc:.1%} | {z:+.2f} | {p:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the earlier result (eval --json)")
    parser.add_argument("new", help="the later result, on the same questions")
    parser.add_argument("--profile", default="baseline", help="the profile compared in both (default: baseline)")
    args = parser.parse_args()
    try:
        rows = compare(args.old, args.new, args.profile)
    except (OSError, ValueError, KeyError) as error:
        sys.exit(f"error: {error}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
