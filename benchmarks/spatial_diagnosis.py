"""Does the model know left from right? Two readings of one `tokentrim eval --dataset scenes` result,
and (`--probe N`) linear probes of the default model's decoder on the spatial questions.

    python benchmarks/spatial_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json
    python benchmarks/spatial_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json --probe 1000

"Describe the picture" answers list the objects left to right (scenes.describe, the training
target). For every pair of objects named in a description (colour and shape, each pair unique in
its picture) whose centres are at least RELATION_GAP apart horizontally, this counts whether the
description names them in the order of their centres: the comparison the spatial questions ask
("Is the red star to the left of the blue cross?"), made without being asked. Beside it, the
spatial questions' accuracy per relation and how often each was answered "yes" (the set is
balanced: chance answers sit near 50%, a "yes" share far from 50% is a prior on the wording).

Reads the predictions and sample ids of each profile (eval's JSON keeps both) and rebuilds the
objects of each picture from scenes.py; nothing is run. Below the table, how far knowing only which
half of the picture each object lies in would go (`halves_bound`).

`--probe N` asks where in the decoder the spatial question is lost. The visual tokens carry where
each object is (benchmarks/size_diagnosis.py: a linear probe reads an object's side of the
picture 99-100% of the time), so the decoder has these steps to take: find the first named object
and read its place, the same for the second, bring both places to where it answers, and compare. The default model, exactly as `tokentrim
eval` loads and prompts it, reads each spatial question (the short-answer prompt, one picture, no
trimming); from its residual stream after every layer, linear probes (size_diagnosis.fit_probe)
read, at the last token of each object's name in the question, whether that object lies left or
right of the picture's middle and whether above or below it; at the second name, the first
object's place again (has it been brought there?); and at the prompt's last token (where the
answer is made) both places and the answer itself. Probes train on N spatial
questions about pictures of their own seeds (PROBE_SEED up, one question each) and are tested on
the evaluation set's spatial questions. The answer's probe is set beside the answer the wording
alone predicts (each relation's majority answer in the probe's training questions): a probe that
reads no more than that has found no comparison. Needs the carrier packages; about 0.7 s per
question on 2 cores (15 minutes for --probe 1000). Markdown on stdout.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from size_diagnosis import attribute_label, fit_probe, read_scenes_result  # noqa: E402  (beside this script; imports no torch)

from tokentrim_cli import scenes  # noqa: E402
from tokentrim_cli.benchmarks import scenes_question  # noqa: E402


def order_counts(description: str, objects: list[scenes.SceneObject]) -> tuple[int, int]:
    """(pairs named in left-to-right order, pairs named out of order) in one description."""
    text = description.lower()
    named = []  # (where in the text, centre x)
    for o in objects:
        if scenes.unique_name(o, objects) != f"{o.color} {o.shape}":
            continue  # a repeated colour and shape: which one was meant is unknowable
        found = re.search(rf"\b{o.color} {o.shape}s?\b", text)
        if found:
            named.append((found.start(), o.x))
    named.sort()
    in_order = out_of_order = 0
    for i, (_, x_first) in enumerate(named):
        for _, x_later in named[i + 1 :]:
            if abs(x_first - x_later) >= scenes.RELATION_GAP:
                in_order += x_first < x_later
                out_of_order += x_first > x_later
    return in_order, out_of_order


def relation_of(question: scenes.Question) -> str:
    return next(r for r, (words, _, _) in scenes.RELATIONS.items() if f" {words} " in question.text)


def diagnose(profile: dict, samples: list[scenes.SceneSample]) -> dict:
    """{"describe_order": (in order, out of order), "spatial": {relation: [right, asked, said yes]}}."""
    in_order = out_of_order = 0
    spatial = {relation: [0, 0, 0] for relation in scenes.RELATIONS}
    for sample_id, prediction in zip(profile["ids"], profile["predictions"]):
        sample = scenes_question(sample_id, samples)
        if sample.question.type == "describe":
            objects = scenes.scene_objects(sample.seed)
            good, bad = order_counts(prediction, objects)
            in_order, out_of_order = in_order + good, out_of_order + bad
        elif sample.question.type == "spatial":
            said = scenes.normalize_short(prediction)
            counts = spatial[relation_of(sample.question)]
            counts[0] += said == sample.question.answer
            counts[1] += 1
            counts[2] += said == "yes"
    return {"describe_order": (in_order, out_of_order), "spatial": spatial}


def halves_bound(samples: list[scenes.SceneSample]) -> tuple[float, int]:
    """(expected accuracy, questions) of an answerer that knows only which half of the picture
    (along the relation's axis) each named object lies in: right whenever the two lie in different
    halves, a coin toss when they share one. What reading places as coarsely as the decoder probes
    below do could reach, were the comparison made."""
    expected, asked = 0.0, 0
    for sample in samples:
        if sample.question.type != "spatial":
            continue
        a, _, b, _ = named_pair(sample.question, scenes.scene_objects(sample.seed))
        axis = scenes.RELATIONS[relation_of(sample.question)][1]
        where = (a.x, b.x) if axis == 0 else (a.y, b.y)
        expected += 1.0 if (where[0] < scenes.SIZE / 2) != (where[1] < scenes.SIZE / 2) else 0.5
        asked += 1
    return expected / max(asked, 1), asked


# ---- the decoder probes -------------------------------------------------------------------------

PROBE_SEED = 975_000  # the probes' pictures: past size_diagnosis' (970,000 up), below TRAIN_SEED
RELATION_WORDS = "|".join(re.escape(words) for words, _, _ in scenes.RELATIONS.values())
QUESTION = re.compile(rf"Is the (.+?) ({RELATION_WORDS}) the (.+)\?")  # scenes.spatial_question's


def named_pair(question: scenes.Question, objects: list[scenes.SceneObject]):
    """(first object, its name, second object, its name) of a spatial question."""
    first, _, second = QUESTION.fullmatch(question.text).groups()
    names = {name: o for o, name in scenes.named_objects(objects)}
    return names[first], first, names[second], second


def probe_labels(question: scenes.Question, objects: list[scenes.SceneObject]) -> dict[str, int | None]:
    """What each probe should read for one question (None: not asked of this question). An object's
    side of the picture is size_diagnosis.attribute_label's (None within RELATION_GAP of the middle)."""
    a, _, b, _ = named_pair(question, objects)
    return {
        "first object: left/right": attribute_label(a, "left or right"),
        "first object: top/bottom": attribute_label(a, "top or bottom"),
        "second object: left/right": attribute_label(b, "left or right"),
        "second object: top/bottom": attribute_label(b, "top or bottom"),
        "answer (yes/no)": int(question.answer == "yes"),
    }


# Where the probes read (the last token of the first object's name, of the second's, of the prompt)
# and what: each object's place where its name is read, the first object's place again at the
# second name (has it been brought there?), both places and the answer where the answer is made.
PLACES = ("first object: left/right", "first object: top/bottom", "second object: left/right", "second object: top/bottom")
POSITIONS = {"first": PLACES[:2], "second": PLACES[2:] + PLACES[:2], "end": ("answer (yes/no)",) + PLACES}
POSITION_NAMES = {"first": "the first object's name (last token)", "second": "the second object's name (last token)",
                  "end": "the prompt's last token (where the answer is made)"}  # fmt: skip


def token_positions(tokenizer, text: str, names: tuple[str, str]) -> dict[str, int]:
    """Where (counted back from the prompt's last token: -1 is the last) the last token of each
    object's name lies in `text`, the templated prompt. Counting from the end makes the image's
    expansion into its visual tokens irrelevant, since the names come after the image."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = encoded["offset_mapping"]
    start = text.rindex("Is the ")
    first_end = start + len("Is the ") + len(names[0])
    second_end = text.index(f" the {names[1]}?", first_end) + len(f" the {names[1]}")
    found = {}
    for key, end in (("first", first_end), ("second", second_end)):
        (index,) = [i for i, (lo, hi) in enumerate(spans) if lo < end <= hi]
        found[key] = index - len(spans)
    found["end"] = -1
    return found


def decoder_states(loaded, items: list[tuple[object, list[scenes.SceneObject], scenes.Question]], log, batch_size: int = 8):
    """(questions, layers + 1, 3, hidden): the residual stream after the embeddings and after
    every decoder layer, at the first name's last token, the second's and the prompt's last."""
    rows = []
    for picture, objects, question in items:
        _, first, _, second = named_pair(question, objects)
        text = build_prompt_text(loaded, question.prompt)
        found = token_positions(loaded.processor.tokenizer, text, (first, second))
        rows.append((picture, question.prompt, [found["first"], found["second"], found["end"]]))
    return residual_stream(loaded, rows, log, batch_size)


def build_prompt_text(loaded, prompt: str) -> str:
    """The templated text of a one-picture prompt, as eval sends it (before the image's expansion)."""
    from tokentrim_cli.inputs import build_prompt, chat_messages

    return build_prompt(loaded.processor, chat_messages(prompt, n_images=1))


def residual_stream(loaded, rows: list[tuple[object, str, list[int]]], log, batch_size: int = 8, layers: list[int] | None = None):
    """(rows, layers + 1, positions, hidden): for each (picture, prompt, positions counted back
    from the prompt's last token), the residual stream after the embeddings and after every
    decoder layer at those positions; with `layers`, after those decoder layers only (rows,
    len(layers), positions, hidden). The prompts go in batches as eval sends them (padded on the
    left, so that positions counted from the end hold in every row)."""
    import torch

    from tokentrim_cli.generation import prepare_batch
    from tokentrim_cli.inputs import LoadedImage

    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        inputs = prepare_batch(loaded, [([LoadedImage("scene", picture)], prompt) for picture, prompt, _ in chunk])
        with torch.no_grad():
            states = loaded.model(**inputs, output_hidden_states=True).hidden_states
        at = torch.tensor([where for _, _, where in chunk]) + states[0].shape[1]  # from the end -> from the start
        kept = states if layers is None else [states[layer] for layer in layers]
        picked = [layer[torch.arange(len(chunk))[:, None], at] for layer in kept]  # each (chunk, positions, hidden)
        out.append(torch.stack(picked, dim=1).float())
        if (start // batch_size + 1) % 10 == 0:
            log(f"{start + len(chunk)}/{len(rows)} questions")
    return torch.cat(out)


def probe_questions(count: int) -> list[tuple[int, scenes.Question]]:
    """One spatial question about each of the probe pictures that have one (seeds PROBE_SEED up)."""
    import random

    found, seed = [], PROBE_SEED
    while len(found) < count:
        question = scenes.make_question("spatial", scenes.scene_objects(seed), random.Random(f"spatial-probe-{seed}"))
        if question is not None:
            found.append((seed, question))
        seed += 1
    return found


def wording_baseline(train: list[scenes.Question], test: list[scenes.Question]) -> float:
    """Accuracy on `test` of each relation's majority answer in `train`."""
    majority = {}
    for relation in scenes.RELATIONS:
        answers = [q.answer for q in train if relation_of(q) == relation]
        majority[relation] = max(("yes", "no"), key=answers.count)
    return sum(majority[relation_of(q)] == q.answer for q in test) / len(test)


def run_decoder_probes(loaded, train: list[tuple[int, scenes.Question]], test: list[tuple[int, scenes.Question]], log) -> dict:
    """{(position, label): [accuracy after the embeddings, after layer 1, ...]} on `test`, plus
    "wording"."""
    import torch

    def states_and_labels(pairs):
        items = [(*scenes.scene(seed), question) for seed, question in pairs]
        labels = [probe_labels(question, objects) for _, objects, question in items]
        return decoder_states(loaded, items, log), labels

    log(f"decoder states of {len(train)} probe questions")
    train_states, train_labels = states_and_labels(train)
    log(f"decoder states of {len(test)} evaluation questions")
    test_states, test_labels = states_and_labels(test)
    slot = {"first": 0, "second": 1, "end": 2}
    out = {}
    for position, probe in ((position, label) for position, labels in POSITIONS.items() for label in labels):
        train_rows = [n for n, labels in enumerate(train_labels) if labels[probe] is not None]
        test_rows = [n for n, labels in enumerate(test_labels) if labels[probe] is not None]
        y_train = torch.tensor([train_labels[n][probe] for n in train_rows])
        y_test = torch.tensor([test_labels[n][probe] for n in test_rows])
        accuracies = []
        for layer in range(train_states.shape[1]):
            predict = fit_probe(train_states[train_rows, layer, slot[position]], y_train, 2)
            with torch.no_grad():
                accuracies.append((predict(test_states[test_rows, layer, slot[position]]) == y_test).float().mean().item())
        out[(position, probe)] = accuracies
    out["wording"] = wording_baseline([q for _, q in train], [q for _, q in test])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", type=Path)
    parser.add_argument("--probe", type=int, default=0, metavar="N", help="also probe the decoder, trained on N questions")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    document = read_scenes_result(args.eval_json)
    samples = scenes.evaluation_questions()
    relations = tuple(scenes.RELATIONS)
    print("| profile | describe: pairs in left-to-right order | " + " | ".join(f"spatial {r}: right (yes)" for r in relations) + " |")
    print("|---|---|" + "---|" * len(relations))
    for profile in document["profiles"]:
        found = diagnose(profile, samples)
        good, bad = found["describe_order"]
        cells = [f"{100 * good / max(good + bad, 1):.1f}% of {good + bad}"]
        for relation in relations:
            right, asked, yes = found["spatial"][relation]
            cells.append(f"{100 * right / max(asked, 1):.0f}% of {asked} ({100 * yes / max(asked, 1):.0f}% yes)")
        print(f"| {profile['profile']} | " + " | ".join(cells) + " |")
    bound, asked = halves_bound(samples)
    print(f"\nKnowing only which half of the picture each named object lies in (along the relation's axis) "
          f"answers {100 * bound:.1f}% of the {asked} spatial questions (a coin toss when both share a half).")

    if args.probe:
        import torch

        from tokentrim_cli.model import load_llava, slow_cpu_dtype_warning

        torch.set_num_threads(args.threads)
        if warning := slow_cpu_dtype_warning("bfloat16", "cpu"):  # the probes' recorded runs were bf16
            print(f"Warning: {warning}", file=sys.stderr)
        log = lambda message: print(f"<!-- {message} -->", file=sys.stderr)  # noqa: E731
        loaded = load_llava("builtin:scenes", device="cpu", dtype="bfloat16")
        test = [(s.seed, s.question) for s in samples if s.question.type == "spatial"]
        found = run_decoder_probes(loaded, probe_questions(args.probe), test, log)
        layers = len(found[("end", "answer (yes/no)")])
        print(f"\nLinear probes of the decoder's residual stream ({loaded.info.model_id}, {loaded.info.revision}; "
              f"trained on {args.probe} spatial questions about pictures from seed {PROBE_SEED} up, tested on the "
              f"{len(test)} evaluation questions). Answer from the wording alone: {100 * found['wording']:.1f}%.")  # fmt: skip
        for position, labels in POSITIONS.items():
            print(f"\nAt {POSITION_NAMES[position]}:\n")
            print("| after layer | " + " | ".join(labels) + " |")
            print("|---|" + "---|" * len(labels))
            for layer in range(layers):
                name = "embeddings" if layer == 0 else str(layer)
                print(f"| {name} | " + " | ".join(f"{100 * found[(position, p)][layer]:.1f}%" for p in labels) + " |")


if __name__ == "__main__":
    main()
