"""Where is a count lost? Linear probes of the default model's decoder on the count questions, set
beside the answers the model gives to the same questions.

    python benchmarks/count_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json --probe 800
    python benchmarks/count_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json --probe 0 --attention 300

A shape's count is the weakest short answer of the default model (64% on the whole set), and five
lessons on the counts did not move it (tokentrim_cli/scenes_model/README.md). This asks whether the
count is in the decoder's residual stream where the answer is made, better than the answer says:

- The default model, exactly as `tokentrim eval` loads and prompts it (bf16, the short-answer
  prompt, one picture, no trimming), reads each count question.
- From its residual stream after the embeddings and after every layer, a linear probe
  (size_diagnosis.fit_probe) reads the count, as one of four classes: 0, 1, 2, 3 or more.
- It reads at two tokens: the last token of what is counted ("stars", "red objects"; the first
  place the decoder knows what to count) and the prompt's last token (where the answer is made).
- Probes are fitted per question type, on N questions of that type about pictures of their own
  seeds (PROBE_SEED up, one question each), and tested on the evaluation set's questions of that
  type.

Beside each probe:
- the model's own answers to the same evaluation questions, from the eval JSON's `baseline`
  profile, scored on the same four classes;
- the answer a probe could give without reading anything: the commonest class among its
  training questions.

Below the per-layer table, one layer per type and token (chosen on the last fifth of the probe
questions with the probe fitted on the rest, never on the evaluation questions) is split by the
true count, and the questions with one object to count by that object's size. How often the probe
reads more than one object there, against how often the model says more than one, tells a count
that is not formed (the probe errs as the answers do) from one that is formed and then lost
before it is said (the probe right where the answers are wrong).

`--attention N` reads where the count questions look. The model is loaded with eager attention (the
one implementation that returns its weights) and reads the first N evaluation questions of each
type that count at least one object and leave at least one uncounted. In every layer, at the same
two tokens, it measures the attention those tokens give to the patches that objects cover, and
the share of it that goes to the counted objects' patches (`train_scenes_model.patch_objects`
says which patches an object covers). The share is given two ways: averaged over the heads, and
for the most selective head. Beside it is what attention blind to the question would give: the
counted objects' part of the object patches. The shares are then split by whether the model
answers the question right.

Needs the carrier packages. About 0.7 s per question on 2 cores: 26 minutes for --probe 800
(2 x 800 probe questions and 686 evaluation questions), 10 minutes for --attention 300. Markdown
on stdout.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from size_diagnosis import counted_objects, fit_probe, read_scenes_result  # noqa: E402  (beside this script; imports no torch)

from tokentrim_cli import scenes  # noqa: E402
from tokentrim_cli.benchmarks import scenes_question  # noqa: E402

PROBE_SEED = 990_000  # the probes' pictures: past count_context's (980,000 up), below TRAIN_SEED
COUNT_TYPES = ("count_color", "count_shape")
CLASSES = ("0", "1", "2", "3 or more")
POSITIONS = ("counted", "end")
POSITION_NAMES = {"counted": "the last token of what is counted", "end": "the prompt's last token"}


def count_class(count: int) -> int:
    """The probe's class of a count: 0, 1, 2, or 3 for three or more."""
    return min(count, len(CLASSES) - 1)


def answer_class(answer: str) -> int | None:
    """The class of a model's short answer, or None when it is not a count."""
    said = scenes.normalize_short(answer)
    return count_class(int(said)) if said.isdigit() else None


def counted_phrase(question: scenes.Question) -> str:
    """What a count question counts, as worded: "stars", "red objects"."""
    return question.text.removeprefix("How many ").removesuffix(" are there?")


def counted_position(tokenizer, text: str, phrase: str) -> int:
    """Where (counted back from the last token of `text`, the templated prompt: -1 is the last) the
    last token of the counted phrase lies. Counting from the end makes the image's expansion into
    its visual tokens irrelevant, since the question comes after the image."""
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    end = text.rindex("How many ") + len("How many ") + len(phrase)
    (index,) = [i for i, (lo, hi) in enumerate(spans) if lo < end <= hi]
    return index - len(spans)


def probe_questions(kind: str, count: int) -> list[tuple[int, scenes.Question]]:
    """One question of `kind` about each of `count` probe pictures (seeds PROBE_SEED up)."""
    return [(seed, scenes.make_question(kind, scenes.scene_objects(seed), random.Random(f"{kind}-probe-{seed}")))
            for seed in range(PROBE_SEED, PROBE_SEED + count)]  # fmt: skip


def decoder_states(loaded, items: list[tuple[object, scenes.Question]], log):
    """(questions, layers + 1, 2, hidden): the residual stream at the counted phrase's last token
    and at the prompt's last token (spatial_diagnosis.residual_stream)."""
    from spatial_diagnosis import build_prompt_text, residual_stream

    rows = []
    for picture, question in items:
        text = build_prompt_text(loaded, question.prompt)
        rows.append((picture, question.prompt, [counted_position(loaded.processor.tokenizer, text, counted_phrase(question)), -1]))
    return residual_stream(loaded, rows, log)


def one_object_size(seed: int, question: scenes.Question) -> str | None:
    """The size of the one object a count question counts, or None when it does not count one."""
    found = counted_objects(question, scenes.scene_objects(seed))
    return found[0].size if len(found) == 1 else None


def breakdown(predicted: list[int | None], truth: list[int], sizes: list[str | None]) -> dict:
    """{"by count": {class: [right, asked]}, "one object": {size: [right, asked, said more than one]}}."""
    by_count = {c: [0, 0] for c in range(len(CLASSES))}
    one = {s: [0, 0, 0] for s in scenes.SIZES}
    for said, true, size in zip(predicted, truth, sizes):
        by_count[true][0] += said == true
        by_count[true][1] += 1
        if size is not None:
            one[size][0] += said == true
            one[size][1] += 1
            one[size][2] += said is not None and said > 1
    return {"by count": by_count, "one object": one}


def run_probes(loaded, kind: str, train: list[tuple[int, scenes.Question]], test: list[tuple[int, scenes.Question]], log) -> dict:
    """For one question type: {"layers": {position: [test accuracy after the embeddings, after
    layer 1, ...]}, "chosen": {position: layer chosen on the probe questions' last fifth},
    "predicted": {position: [chosen layer's class per test question]}, "truth": [class per test
    question], "majority": the commonest training class's accuracy on the test questions}."""
    import torch

    log(f"{kind}: decoder states of {len(train)} probe and {len(test)} evaluation questions")
    train_states = decoder_states(loaded, [(scenes.picture(seed), q) for seed, q in train], log)
    test_states = decoder_states(loaded, [(scenes.picture(seed), q) for seed, q in test], log)
    y_train = torch.tensor([count_class(int(q.answer)) for _, q in train])
    y_test = torch.tensor([count_class(int(q.answer)) for _, q in test])
    fit_rows = len(train) - len(train) // 5
    classes = len(CLASSES)
    out = {"layers": {}, "chosen": {}, "predicted": {}, "truth": y_test.tolist()}
    for slot, position in enumerate(POSITIONS):
        tested, validated = [], []
        for layer in range(train_states.shape[1]):
            predict = fit_probe(train_states[:, layer, slot], y_train, classes)
            early = fit_probe(train_states[:fit_rows, layer, slot], y_train[:fit_rows], classes)
            with torch.no_grad():
                tested.append((predict(test_states[:, layer, slot]) == y_test).float().mean().item())
                validated.append((early(train_states[fit_rows:, layer, slot]) == y_train[fit_rows:]).float().mean().item())
        chosen = max(range(len(validated)), key=lambda layer: (validated[layer], layer))
        predict = fit_probe(train_states[:, chosen, slot], y_train, classes)
        with torch.no_grad():
            out["predicted"][position] = predict(test_states[:, chosen, slot]).tolist()
        out["layers"][position], out["chosen"][position] = tested, chosen
    commonest = max(range(classes), key=lambda c: (y_train == c).sum().item())
    out["majority"] = (y_test == commonest).float().mean().item()
    return out


GROUPS = ("counted", "kin")  # the counted objects; the uncounted ones that share the other attribute with one


def counted_attention(loaded, items: list[tuple[object, list[scenes.SceneObject], scenes.Question]], log, batch_size: int = 4):
    """(questions, layers, heads, 2 tokens, 2 groups): of the attention that the counted phrase's
    last token (token 0) and the prompt's last token (token 1) give to the patches objects cover,
    the share that goes to each group's patches: the counted objects (group 0), and the uncounted
    objects that share the other attribute with a counted one (group 1: the same colour as a
    counted star, the same shape as a counted red object). And (questions, 2 groups): each group's
    part of those patches (what attention blind to the question would give it). Needs eager
    attention (`loaded` loaded with attn_impl="eager"), which is what returns the weights."""
    import torch

    from size_diagnosis import patch_owners
    from spatial_diagnosis import build_prompt_text

    from tokentrim_cli.generation import prepare_batch
    from tokentrim_cli.inputs import LoadedImage

    image_token = loaded.model.config.image_token_id
    shares, blind = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        inputs = prepare_batch(loaded, [([LoadedImage("scene", picture)], question.prompt) for picture, _, question in chunk])
        with torch.no_grad():
            attentions = loaded.model(**inputs, output_attentions=True).attentions  # each (batch, heads, queries, keys)
        length = inputs["input_ids"].shape[1]
        for n, (_, objects, question) in enumerate(chunk):
            text = build_prompt_text(loaded, question.prompt)
            at = torch.tensor([counted_position(loaded.processor.tokenizer, text, counted_phrase(question)), -1]) + length
            visual = (inputs["input_ids"][n] == image_token).nonzero().squeeze(1)  # the patches, row-major
            owner = patch_owners(len(visual), objects)
            counted = counted_objects(question, objects)
            other = 1 if question.type == "count_color" else 0  # the attribute not asked: (colour, shape)[other]
            kin = {(c.color, c.shape)[other] for c in counted}
            group = [0 if any(o is c for c in counted) else 1 if (o.color, o.shape)[other] in kin else -1 for o in objects]
            patch_group = torch.tensor([group[i] if i >= 0 else -1 for i in owner.tolist()])
            on_object = owner >= 0
            rows = torch.stack([layer[n][:, at][:, :, visual].float() for layer in attentions])  # (layers, heads, 2, patches)
            total = rows[..., on_object].sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
            shares.append(torch.stack([rows[..., patch_group == g].sum(-1) / total for g in range(len(GROUPS))], dim=-1))
            blind.append(torch.stack([(patch_group == g).sum() / on_object.sum() for g in range(len(GROUPS))]))
        if (start // batch_size + 1) % 10 == 0:
            log(f"{start + len(chunk)}/{len(items)} questions")
    return torch.stack(shares), torch.stack(blind)


def model_answers(document: dict, samples: list[scenes.SceneSample], profile: str = "baseline") -> dict[tuple[int, str], str]:
    """{(picture seed, question text): the model's answer} from one profile of an eval JSON."""
    (found,) = [p for p in document["profiles"] if p["profile"] == profile]
    answers = {}
    for sample_id, prediction in zip(found["ids"], found["predictions"]):
        sample = scenes_question(sample_id, samples)
        answers[(sample.seed, sample.question.text)] = prediction
    return answers


def percent(right: int, asked: int) -> str:
    return f"{100 * right / asked:.1f}% of {asked}" if asked else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", type=Path, help="a whole-set `tokentrim eval --dataset scenes` result with a baseline profile")
    parser.add_argument("--probe", type=int, default=800, metavar="N", help="probe questions per type (0: no probes)")
    parser.add_argument("--attention", type=int, default=0, metavar="N",
                        help="also read where the counted phrase attends, on the first N evaluation questions of each type")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    samples = scenes.evaluation_questions()
    answers = model_answers(read_scenes_result(args.eval_json), samples)

    import torch

    from tokentrim_cli.model import load_llava, slow_cpu_dtype_warning

    torch.set_num_threads(args.threads)
    if warning := slow_cpu_dtype_warning("bfloat16", "cpu"):  # eval's whole-set results are bf16
        print(f"Warning: {warning}", file=sys.stderr)
    log = lambda message: print(f"<!-- {message} -->", file=sys.stderr)  # noqa: E731
    if args.probe:
        report_probes(load_llava("builtin:scenes", device="cpu", dtype="bfloat16"), samples, answers, args, log)
    if args.attention:
        loaded = load_llava("builtin:scenes", device="cpu", dtype="bfloat16", attn_impl="eager")
        report_attention(loaded, samples, answers, args.attention, log)


def report_probes(loaded, samples, answers, args, log) -> None:
    print(f"Linear probes of the decoder's residual stream ({loaded.info.model_id}, {loaded.info.revision}; "
          f"bf16; trained on {args.probe} questions of each type about pictures from seed {PROBE_SEED} up, "
          f"tested on the evaluation set's questions of that type), beside the model's answers ({args.eval_json.name}, "
          f"baseline). Classes: {', '.join(CLASSES)}.")  # fmt: skip
    for kind in COUNT_TYPES:
        test = [(s.seed, s.question) for s in samples if s.question.type == kind]
        if missing := [q.text for seed, q in test if (seed, q.text) not in answers]:
            sys.exit(f"{args.eval_json}: no baseline answer to {len(missing)} {kind} questions (a whole-set result is needed)")
        found = run_probes(loaded, kind, probe_questions(kind, args.probe), test, log)
        said = [answer_class(answers[(seed, q.text)]) for seed, q in test]
        model = sum(s == t for s, t in zip(said, found["truth"])) / len(test)
        print(f"\n## {kind} ({len(test)} evaluation questions)\n\nThe model's answers: {100 * model:.1f}% right "
              f"(four classes). The commonest class alone: {100 * found['majority']:.1f}%.\n")  # fmt: skip
        print("| after layer | " + " | ".join(f"probe at {POSITION_NAMES[p]}" for p in POSITIONS) + " |")
        print("|---|" + "---|" * len(POSITIONS))
        for layer in range(len(found["layers"]["end"])):
            name = "embeddings" if layer == 0 else str(layer)
            print(f"| {name} | " + " | ".join(f"{100 * found['layers'][p][layer]:.1f}%" for p in POSITIONS) + " |")
        sizes = [one_object_size(seed, q) for seed, q in test]
        readers = {"the model's answers": said} | {
            f"probe at {POSITION_NAMES[p]}, layer {found['chosen'][p]}": found["predicted"][p] for p in POSITIONS}
        split = {name: breakdown(predicted, found["truth"], sizes) for name, predicted in readers.items()}
        print("\n| | " + " | ".join(f"count {c}" for c in CLASSES) + " | one small object: right (said more than one) "
              "| one large object: right (said more than one) |")  # fmt: skip
        print("|---|" + "---|" * (len(CLASSES) + 2))
        for name, cells in split.items():
            row = [percent(*cells["by count"][c]) for c in range(len(CLASSES))]
            for size in scenes.SIZES:
                right, asked, more = cells["one object"][size]
                row.append(f"{percent(right, asked)} ({100 * more / max(asked, 1):.1f}%)")
            print(f"| {name} | " + " | ".join(row) + " |")


def attention_questions(samples, kind: str, count: int) -> list[tuple[int, scenes.Question]]:
    """The first `count` evaluation questions of `kind` that count at least one object and leave at
    least one object uncounted (so that attention can favour the counted ones or not)."""
    found = []
    for sample in samples:
        objects = scenes.scene_objects(sample.seed)
        if sample.question.type == kind and 0 < len(counted_objects(sample.question, objects)) < len(objects):
            found.append((sample.seed, sample.question))
        if len(found) == count:
            break
    return found


def report_attention(loaded, samples, answers, count: int, log) -> None:
    import torch

    found, right = {}, {}
    for kind in COUNT_TYPES:
        log(f"{kind}: attention of {count} evaluation questions")
        chosen = attention_questions(samples, kind, count)
        found[kind] = counted_attention(loaded, [(*scenes.scene(seed), q) for seed, q in chosen], log)
        right[kind] = torch.tensor([scenes.normalize_short(answers[(seed, q.text)]) == q.answer for seed, q in chosen])
    print(f"\n## Where the count questions attend ({loaded.info.model_id}, {loaded.info.revision}; bf16, eager attention; "
          f"the first {count} evaluation questions of each type that count at least one object and leave one uncounted)\n")
    blind = " and ".join(f"{100 * found[kind][1][:, 0].mean():.1f}% ({kind})" for kind in COUNT_TYPES)
    print(f"Of the attention a token gives to the patches objects cover, the share that goes to the counted objects' "
          f"patches: mean over the questions, of the mean over heads and of the most selective head (chosen per layer "
          f"on these questions, for both types alike). Attention blind to the question would give them {blind}.\n")
    print("| layer | " + " | ".join(f"{kind} at {POSITION_NAMES[p]}: heads' mean / best head" for kind in COUNT_TYPES
                                      for p in POSITIONS) + " |")  # fmt: skip
    print("|---|" + "---|" * (len(COUNT_TYPES) * len(POSITIONS)))
    layers = found[COUNT_TYPES[0]][0].shape[1]
    for layer in range(layers):
        cells = []
        for kind in COUNT_TYPES:
            share = found[kind][0][:, layer, :, :, 0]  # (questions, heads, 2 tokens): the counted objects
            for slot in range(len(POSITIONS)):
                per_head = share[:, :, slot].mean(0)
                cells.append(f"{100 * share[:, :, slot].mean():.1f}% / {100 * per_head.max():.1f}%")
        print(f"| {layer + 1} | " + " | ".join(cells) + " |")
    print("\nAt the layer where the heads' mean share is highest (chosen on these questions), the share on the questions "
          "the model answers right (baseline) and on those it answers wrong, each beside what attention blind to the "
          "question would give (more objects to count make both larger):\n")  # fmt: skip
    print("| question type | token | layer | answered right: share (blind) | answered wrong: share (blind) |")
    print("|---|---|---|---|---|")
    for kind in COUNT_TYPES:
        shares, blind, good = found[kind][0][..., 0].mean(2), found[kind][1][:, 0], right[kind]  # heads' mean, (questions, layers, 2)
        for slot, position in enumerate(POSITIONS):
            layer = int(shares[:, :, slot].mean(0).argmax())
            cells = []
            for group in (good, ~good):
                at = shares[group, layer, slot]
                cells.append(f"{100 * at.mean():.1f}% ({100 * blind[group].mean():.1f}%) of {len(at)}" if len(at) else "-")
            print(f"| {kind} | {POSITION_NAMES[position]} | {layer + 1} | " + " | ".join(cells) + " |")
    print("\nWhere the rest goes, at the same layers: the share that goes to the uncounted objects sharing the attribute "
          "not asked with a counted one (a star's colour; a red object's shape), and to the other uncounted objects, each "
          "beside what attention blind to the question would give (questions with both kinds of uncounted object):\n")  # fmt: skip
    print("| question type | token | layer | counted | uncounted, sharing the other attribute | other uncounted |")
    print("|---|---|---|---|---|---|")
    for kind in COUNT_TYPES:
        shares, blind = found[kind][0].mean(2), found[kind][1]  # heads' mean: (questions, layers, 2 tokens, 2 groups)
        both = (blind[:, 1] > 0) & (blind.sum(1) < 1)
        for slot, position in enumerate(POSITIONS):
            layer = int(shares[:, :, slot, 0].mean(0).argmax())
            at, expected = shares[both, layer, slot], blind[both]
            rest, rest_blind = 1 - at.sum(1), 1 - expected.sum(1)
            cells = [f"{100 * at[:, g].mean():.1f}% ({100 * expected[:, g].mean():.1f}%)" for g in range(len(GROUPS))]
            cells.append(f"{100 * rest.mean():.1f}% ({100 * rest_blind.mean():.1f}%)")
            print(f"| {kind} ({int(both.sum())}) | {POSITION_NAMES[position]} | {layer + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
