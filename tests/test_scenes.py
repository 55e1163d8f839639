"""The scenes testbed: deterministic per seed, answers recomputed here from the object list (never
from the generator's own answer code), scoring by hand, disjoint seed spaces."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from benchmark_scripts import benchmark_module

from tokentrim_cli import scenes


def test_pictures_and_questions_are_deterministic_per_seed():
    first_picture, first_objects = scenes.scene(42)
    second_picture, second_objects = scenes.scene(42)
    assert first_objects == second_objects and first_picture.tobytes() == second_picture.tobytes()
    assert scenes.scene(43)[0].tobytes() != first_picture.tobytes()
    assert first_picture.size == (336, 336) and first_picture.mode == "RGB"
    a, b = scenes.evaluation_questions(20), scenes.evaluation_questions(20)
    assert [(s.seed, s.question) for s in a] == [(s.seed, s.question) for s in b]


def test_scenes_have_what_the_testbed_needs():
    sizes, counts, shapes, colors = set(), Counter(), set(), set()
    for seed in range(300):
        objects = scenes.place_objects(random.Random(seed))
        counts[len(objects)] += 1
        for o in objects:
            sizes.add(o.size)
            shapes.add(o.shape)
            colors.add(o.color)
            assert o.radius + scenes.MARGIN <= o.x <= scenes.SIZE - o.radius - scenes.MARGIN
        for a in objects:  # never overlapping
            for b in objects:
                if a is not b:
                    assert ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5 > a.radius + b.radius
    assert min(counts) >= 3 and max(counts) == 8
    assert len(shapes) >= 5 and len(colors) >= 8 and sizes == {"small", "large"}
    assert scenes.SIZES["small"] * 2 <= 2 * 14 + 2  # a small object spans about 2x2 patches of 14 px


def _expected_answer(question: scenes.Question, objects) -> str:
    """The answer recomputed from the object list by parsing the question text."""
    text = question.text
    if question.type == "count_color":
        color = text.split()[2]
        return str(sum(o.color == color for o in objects))
    if question.type == "count_shape":
        plural = text.split()[2]
        shape = {v: k for k, v in scenes.PLURALS.items()}[plural]
        return str(sum(o.shape == shape for o in objects))
    if question.type == "color":
        words = text.removeprefix("What color is the ").removesuffix("?").split()
        matches = [o for o in objects if o.shape == words[-1] and (len(words) == 1 or o.size == words[0])]
        assert len(matches) == 1
        return matches[0].color
    if question.type == "shape":
        words = text.removeprefix("What shape is the ").removesuffix(" object?").split()
        matches = [o for o in objects if o.color == words[-1] and (len(words) == 1 or o.size == words[0])]
        assert len(matches) == 1
        return matches[0].shape
    if question.type == "exist":
        _, _, _, color, shape = text.removesuffix("?").split()
        return "yes" if any(o.color == color and o.shape == shape for o in objects) else "no"
    if question.type == "spatial":
        body = text.removeprefix("Is the ").removesuffix("?")
        for words, axis, sign in (("to the left of", "x", -1), ("to the right of", "x", 1), ("above", "y", -1), ("below", "y", 1)):
            if f" {words} the " in body:
                left, right = body.split(f" {words} the ")
                break
        a, b = _find(left, objects), _find(right, objects)
        delta = getattr(a, axis) - getattr(b, axis)
        assert abs(delta) >= scenes.RELATION_GAP  # only clear relations are asked about
        return "yes" if delta * sign > 0 else "no"
    raise AssertionError(question.type)


def _find(name: str, objects):
    words = name.split()
    matches = [o for o in objects if o.color == words[-2] and o.shape == words[-1] and (len(words) == 2 or o.size == words[0])]
    assert len(matches) == 1, name
    return matches[0]


def test_answers_recomputed_from_the_objects():
    seen = Counter()
    for item in scenes.evaluation_questions(150):
        objects = scenes.place_objects(random.Random(item.seed))
        question = item.question
        seen[question.type] += 1
        if question.type == "describe":
            said = Counter(scenes.mentioned_objects(question.answer))
            assert said == Counter((o.color, o.shape) for o in objects)
            assert question.answer.startswith(f"There are {len(objects)} objects: ")
        else:
            assert question.answer == _expected_answer(question, objects), question
    assert set(seen) == set(scenes.TYPES)


def test_the_evaluation_set_is_balanced_and_large_enough():
    questions = scenes.evaluation_questions()
    types = Counter(q.question.type for q in questions)
    assert sum(n for t, n in types.items() if t != "describe") >= 2000
    assert min(types.values()) >= 300
    for kind in ("exist", "spatial"):
        answers = Counter(q.question.answer for q in questions if q.question.type == kind)
        assert abs(answers["yes"] - answers["no"]) <= 0.1 * sum(answers.values())


def test_seed_spaces_never_overlap():
    evaluation = {q.seed for q in scenes.evaluation_questions()}
    calibration = {s.seed for s in scenes.calibration_samples()}
    assert max(evaluation) < scenes.CALIBRATION_SEED <= min(calibration)
    assert max(calibration) < 900_000 < scenes.TRAIN_SEED  # 900,000+: the training script's held-out check


def test_describe_scoring_by_hand():
    objects = [scenes.SceneObject("star", "red", "small", 10, 10, 14), scenes.SceneObject("circle", "blue", "large", 50, 50, 30),
               scenes.SceneObject("star", "red", "large", 90, 90, 30)]  # fmt: skip
    recall, precision = scenes.describe_scores("There are 3 objects: a small red star, a large blue circle.", objects)
    assert recall == pytest.approx(2 / 3) and precision == pytest.approx(1.0)
    recall, precision = scenes.describe_scores("a red star, a red star, a red star and a green cross", objects)
    assert recall == pytest.approx(2 / 3) and precision == pytest.approx(2 / 4)
    assert scenes.describe_scores("nothing here", objects) == (0.0, 0.0)


def test_short_answer_normalisation():
    assert scenes.normalize_short("Two.") == "2" and scenes.normalize_short("The Star!") == "star"
    assert scenes.normalize_short(" yes ") == "yes"


def test_the_chat_sentence_and_the_short_answer_agree():
    for item in scenes.evaluation_questions(60):
        question = item.question
        if question.type in ("color", "shape"):
            assert question.answer in question.sentence
        if question.type in ("exist", "spatial"):
            assert question.sentence.lower().startswith(question.answer)


def test_the_evaluation_and_calibration_sets_are_the_measured_ones():
    """Every committed scenes number (benchmarks/README.md, the model card) was measured on these
    questions; a change to the generator that redraws them must fail here, and then every number
    must be remeasured. (Training-only options such as narrowed palettes must leave them alone.)"""
    import hashlib
    import json

    def digest(samples):
        rows = [[s.seed, s.question.type, s.question.text, s.question.answer] for s in samples]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    assert digest(scenes.evaluation_questions()) == "08cd4417abe43d3450bccb80a14e97c2758e45183405d8cb356f5e1313199683"
    assert digest(scenes.calibration_samples()) == "3145766cb5f50730dc77365768425bfdb0f94bae1a4edff4fb333c807f624001"


def _sample_id(samples, index: int) -> str:
    return f"{samples[index].seed - scenes.EVAL_SEED}-{index}"


def test_the_spatial_diagnosis_counts_order_and_answers_by_hand():
    """benchmarks/spatial_diagnosis.py on hand-made predictions: a description naming the objects
    in the order of their centres, the same reversed, and every spatial question answered "yes"."""
    diagnosis = benchmark_module("spatial_diagnosis")
    samples = scenes.evaluation_questions()
    index = next(i for i, s in enumerate(samples) if s.question.type == "describe")
    objects = scenes.place_objects(random.Random(samples[index].seed))
    unique = [o for o in objects if sum((p.color, p.shape) == (o.color, o.shape) for p in objects) == 1]
    xs = sorted(o.x for o in unique)
    apart = sum(abs(a - b) >= scenes.RELATION_GAP for i, a in enumerate(xs) for b in xs[i + 1 :])
    assert apart >= 3  # the picture has something to count
    left_to_right = ", ".join(f"a {o.size} {o.color} {o.shape}" for o in sorted(unique, key=lambda o: o.x))
    right_to_left = ", ".join(f"a {o.size} {o.color} {o.shape}" for o in sorted(unique, key=lambda o: -o.x))
    assert diagnosis.order_counts(left_to_right, objects) == (apart, 0)
    assert diagnosis.order_counts(right_to_left.upper(), objects) == (0, apart)
    assert diagnosis.order_counts("Nothing I can name.", objects) == (0, 0)

    spatial = [i for i, s in enumerate(samples) if s.question.type == "spatial"][:40]
    ids = [_sample_id(samples, i) for i in [index] + spatial]
    profile = {"ids": ids, "predictions": [left_to_right] + ["Yes"] * len(spatial)}
    found = diagnosis.diagnose(profile, samples)
    assert found["describe_order"] == (apart, 0)
    for relation, (right, asked, said_yes) in found["spatial"].items():
        words = scenes.RELATIONS[relation][0]
        mine = [samples[i].question for i in spatial if f" {words} " in samples[i].question.text]
        assert asked == said_yes == len(mine)
        assert right == sum(q.answer == "yes" for q in mine)
    assert sum(asked for _, asked, _ in found["spatial"].values()) == len(spatial)


def test_the_halves_bound_by_hand(monkeypatch):
    """Objects in different halves along the relation's axis: always right; in the same half: a coin
    toss. Three made-up questions: (1 + 0.5 + 1) / 3; a describe question does not count."""
    diagnosis = benchmark_module("spatial_diagnosis")
    star = lambda x, y: scenes.SceneObject("star", "red", "large", x, y, 30.0)  # noqa: E731
    cross = lambda x, y: scenes.SceneObject("cross", "blue", "large", x, y, 30.0)  # noqa: E731
    pictures = {1: [star(60, 60), cross(300, 80)],  # left / right halves
                2: [star(60, 60), cross(140, 300)],  # both in the left half; top and bottom
                3: [star(60, 60), cross(140, 300)]}  # fmt: skip
    monkeypatch.setattr(scenes, "scene_objects", lambda seed: pictures[seed])

    def ask(seed, words):
        question = scenes.Question("spatial", f"Is the red star {words} the blue cross?", "yes", "")
        return scenes.SceneSample(seed, question)

    samples = [ask(1, "to the right of"), ask(2, "to the left of"), ask(3, "below"),
               scenes.SceneSample(1, scenes.Question("describe", "Describe.", "", ""))]  # fmt: skip
    bound, asked = diagnosis.halves_bound(samples)
    assert asked == 3 and bound == pytest.approx(2.5 / 3)


def test_the_spatial_probe_reads_each_label_at_its_own_token():
    """spatial_diagnosis --probe on made-up decoder states: each object's place is written only at
    its own name's token, the answer only at the prompt's last token and only from layer 2 on. The
    probes must find each where it was written and nowhere else (labels recomputed here from the
    objects' centres)."""
    import torch

    diagnosis = benchmark_module("spatial_diagnosis")
    generator = torch.Generator().manual_seed(0)

    def written(items, log):
        states = torch.randn(len(items), 4, 3, 6, generator=generator)
        for n, (_, objects, question) in enumerate(items):
            names = {scenes.unique_name(o, objects): o for o in objects}
            a = next(o for name, o in names.items() if question.text.startswith(f"Is the {name} "))
            b = next(o for name, o in names.items() if question.text.endswith(f" the {name}?"))
            states[n, :, 0, 0] += 4 * (1 if a.x > 168 else -1)
            states[n, :, 0, 1] += 4 * (1 if a.y > 168 else -1)
            states[n, :, 1, 2] += 4 * (1 if b.x > 168 else -1)
            states[n, :, 1, 3] += 4 * (1 if b.y > 168 else -1)
            states[n, 2:, 2, 4] += 4 * (1 if question.answer == "yes" else -1)
        return states

    diagnosis.decoder_states = lambda loaded, items, log: written(items, log)
    train = diagnosis.probe_questions(160)
    test = [(s.seed, s.question) for s in scenes.evaluation_questions() if s.question.type == "spatial"][:80]
    found = diagnosis.run_decoder_probes(None, train, test, lambda message: None)
    first, second = ("first object: left/right", "first object: top/bottom"), ("second object: left/right", "second object: top/bottom")
    for position, label in [("first", p) for p in first] + [("second", p) for p in second]:
        assert min(found[(position, label)]) > 0.95, (position, label)
    for position, label in [("second", p) for p in first] + [("end", p) for p in first + second]:
        assert max(found[(position, label)]) < 0.75, (position, label)  # written elsewhere only
    answer = found[("end", "answer (yes/no)")]
    assert max(answer[:2]) < 0.75 and min(answer[2:]) > 0.95
    assert 0.3 < found["wording"] < 0.7  # yes and no are balanced per relation


def test_the_size_diagnosis_finds_the_asked_object_and_splits_by_size():
    """benchmarks/size_diagnosis.py: the object a colour or shape question names, found here from
    the answer and the question's words instead of the naming rules; hand-made predictions right on
    small objects only, descriptions naming the large objects only, every count answered "1"."""
    diagnosis = benchmark_module("size_diagnosis")
    samples = scenes.evaluation_questions()
    named = [i for i, s in enumerate(samples) if s.question.type in ("color", "shape")][:120]
    sizes = {}
    for i in named:
        question, objects = samples[i].question, scenes.scene_objects(samples[i].seed)
        words = set(question.text.rstrip("?").split())
        if question.type == "color":  # the answer is its colour, the question names its shape
            fits = [o for o in objects if o.color == question.answer and o.shape in words]
        else:  # the answer is its shape, the question names its colour
            fits = [o for o in objects if o.shape == question.answer and o.color in words]
        fits = [o for o in fits if o.size in words] if len(fits) > 1 else fits
        assert len(fits) == 1, question.text
        assert diagnosis.asked_object(question, objects) == fits[0]
        sizes[i] = fits[0].size
    assert set(sizes.values()) == {"small", "large"}

    exist = [i for i, s in enumerate(samples) if s.question.type == "exist"][:60]
    cases = {}
    for i in exist:  # "Is there a red star?": the answer and the sizes of the red stars, found here
        question, objects = samples[i].question, scenes.scene_objects(samples[i].seed)
        matches = [o for o in objects if f" {o.color} {o.shape}?" in question.text]
        assert (question.answer == "yes") == bool(matches)
        cases[i] = max((o.size for o in matches), key=["small", "large"].index) if matches else "absent"
    assert set(cases.values()) == {"small", "large", "absent"}

    describe = [i for i, s in enumerate(samples) if s.question.type == "describe"][:30]
    counts = [i for i, s in enumerate(samples) if s.question.type.startswith("count")][:200]
    large_only = {}
    for i in describe:
        objects = scenes.scene_objects(samples[i].seed)
        large_only[i] = scenes.describe([o for o in objects if o.size == "large"] or objects[:1])
    predictions = {i: samples[i].question.answer if sizes[i] == "small" else "no idea" for i in named}
    predictions |= large_only | {i: "One." for i in counts} | {i: "Yes." for i in exist}
    ids = list(predictions)
    found = diagnosis.diagnose({"ids": [_sample_id(samples, i) for i in ids], "predictions": [predictions[i] for i in ids]}, samples)

    for kind in ("color", "shape"):
        small = sum(sizes[i] == "small" and samples[i].question.type == kind for i in named)
        large = sum(sizes[i] == "large" and samples[i].question.type == kind for i in named)
        assert found["named"][(kind, "small")] == [small, small]
        assert found["named"][(kind, "large")] == [0, large]
    for case in ("small", "large", "absent"):
        asked = sum(c == case for c in cases.values())
        assert found["named"][("exist", case)] == [0 if case == "absent" else asked, asked]
    unique = {"small": 0, "large": 0}
    for i in describe:
        objects = scenes.scene_objects(samples[i].seed)
        for o in objects:
            unique[o.size] += sum((p.color, p.shape) == (o.color, o.shape) for p in objects) == 1
    assert found["describe"]["large"] == [unique["large"], unique["large"]]  # every large object named
    assert found["describe"]["small"][1] == unique["small"]
    stand_ins = [scenes.scene_objects(samples[i].seed) for i in describe]  # pictures without a large object
    stand_ins = [objects for objects in stand_ins if all(o.size == "small" for o in objects)]
    assert found["describe"]["small"][0] == sum(
        sum((p.color, p.shape) == (objects[0].color, objects[0].shape) for p in objects) == 1 for objects in stand_ins
    )

    for (kind, truth), (right, asked) in found["count"].items():
        assert right == (asked if truth == 1 else 0)
        assert asked == sum(samples[i].question.type == kind and samples[i].question.answer == str(truth) for i in counts)
    # a description of the large objects alone counts right exactly when no small object is counted
    described = {samples[i].seed: i for i in describe}
    expected: Counter = Counter()
    for i in counts:
        if samples[i].seed in described:
            question, objects = samples[i].question, scenes.scene_objects(samples[i].seed)
            counted = [o for o in objects if question.text.split()[2] in (o.color, scenes.PLURALS[o.shape])]
            large = [o for o in objects if o.size == "large"] or objects[:1]
            description_right = sum(o in large for o in counted) == len(counted)
            expected[(question.type, description_right, question.answer == "1")] += 1
    assert found["count_vs_description"] == dict(expected) and expected


def test_the_size_diagnosis_probe_pools_an_objects_patches_and_learns():
    """The probe's feature of an object is the mean over the patches it covers (with --patches, each
    of those patches alone, labelled with that object); the probe separates
    separable classes (and is not handed the answer: shuffled labels stay near chance)."""
    import torch

    diagnosis = benchmark_module("size_diagnosis")
    features = torch.arange(576.0).unsqueeze(1)  # patch p's feature is p
    centred = scenes.SceneObject("star", "red", "small", 7 + 14 * 7, 7 + 14 * 5, 14)  # on patch (row 5, col 7) alone
    large = scenes.SceneObject("circle", "blue", "large", 14 * 12, 14 * 12, 30)  # between 4 patch centres, 12 covered
    means = diagnosis.object_means(features, [centred, large])
    assert means[0].item() == 5 * 24 + 7
    covered = [r * 24 + c for r in range(24) for c in range(24) if ((c * 14 + 7 - 168) ** 2 + (r * 14 + 7 - 168) ** 2) ** 0.5 < 22.5]
    assert len(covered) == 12 and means[1].item() == pytest.approx(sum(covered) / len(covered))
    rows, owners = diagnosis.object_patches(features, [centred, large])  # --patches: each covered patch alone
    assert sorted(rows[:, 0].tolist()) == sorted([5 * 24 + 7, *covered])
    assert [o for value, o in zip(rows[:, 0].tolist(), owners) if value == 5 * 24 + 7] == [centred]
    assert all(o is large for value, o in zip(rows[:, 0].tolist(), owners) if value in covered)

    left_top = scenes.SceneObject("star", "red", "small", 100, 100, 14)
    right_bottom = scenes.SceneObject("cross", "white", "large", 250, 300, 30)
    middle = scenes.SceneObject("circle", "blue", "small", 180, 150, 14)  # within 28 px of both middle lines
    assert [diagnosis.attribute_label(o, "left or right") for o in (left_top, right_bottom, middle)] == [0, 1, None]
    assert [diagnosis.attribute_label(o, "top or bottom") for o in (left_top, right_bottom, middle)] == [0, 1, None]
    assert diagnosis.attribute_label(right_bottom, "colour") == list(scenes.COLORS).index("white")
    assert diagnosis.attribute_label(right_bottom, "shape") == scenes.SHAPES.index("cross")

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=generator)
    centres = torch.randn(4, 16, generator=generator) * 3
    x = centres[labels] + torch.randn(400, 16, generator=generator)
    predict = diagnosis.fit_probe(x[:300], labels[:300], 4)
    assert (predict(x[300:]) == labels[300:]).float().mean() > 0.95
    shuffled = labels[:300][torch.randperm(300, generator=generator)]
    assert (diagnosis.fit_probe(x[:300], shuffled, 4)(x[300:]) == labels[300:]).float().mean() < 0.5


def test_the_paired_comparison_counts_discordant_answers_by_type(tmp_path):
    """benchmarks/paired_comparison.py on two hand-made results: per type, the questions right in
    one result and wrong in the other counted here by the question's own type, McNemar's z and the
    exact p-value of hand-computed cases; results on other questions or without the profile refused."""
    comparison = benchmark_module("paired_comparison")
    # Exact two-sided binomial p: 0 against 6 is 2 * 1/64; 1 against 9 is 2 * (1 + 10) / 1024.
    assert comparison.mcnemar(0, 6) == (pytest.approx(6 / 6**0.5), pytest.approx(2 / 64))
    assert comparison.mcnemar(9, 1) == (pytest.approx(-8 / 10**0.5), pytest.approx(22 / 1024))
    assert comparison.mcnemar(5, 5) == (0.0, 1.0) and comparison.mcnemar(0, 0) == (0.0, 1.0)

    samples = scenes.evaluation_questions()
    chosen = list(range(0, 2400, 7))
    ids = [_sample_id(samples, i) for i in chosen]
    rng = random.Random(3)
    old = [float(rng.random() < 0.7) for _ in chosen]
    new = [float(rng.random() < 0.8) for _ in chosen]
    expected = Counter()
    for i, was, now in zip(chosen, old, new):
        kind = samples[i].question.type
        if kind == "describe":
            continue
        cell = {(1.0, 1.0): "both", (1.0, 0.0): "only_old", (0.0, 1.0): "only_new", (0.0, 0.0): "neither"}[was, now]
        expected[kind, cell] += 1
        expected["short", cell] += 1

    def result(name, correct, digest="d1", profile="baseline"):
        # A describe answer is scored by recall: a fraction, never counted as right or wrong.
        correct = [0.5 if samples[i].question.type == "describe" else c for i, c in zip(chosen, correct)]
        document = {"benchmark": "scenes", "dataset": "scenes (hand-made)", "dataset_sha256": digest,
                    "profiles": [{"profile": "random-64", "ids": ids, "correct": [0.0] * len(ids)},
                                 {"profile": profile, "ids": ids, "correct": correct}]}  # fmt: skip
        path = tmp_path / name
        path.write_text(json.dumps(document))
        return str(path)

    rows = comparison.compare(result("old.json", old), result("new.json", new))
    assert set(rows) == {"short", "count_color", "count_shape", "color", "shape", "exist", "spatial"}
    for kind, row in rows.items():
        assert row == {cell: expected[kind, cell] for cell in ("both", "only_old", "only_new", "neither")}, kind
    assert sum(rows["short"].values()) == sum(1 for i in chosen if samples[i].question.type != "describe")
    table = comparison.markdown(rows)
    z, p = comparison.mcnemar(rows["short"]["only_old"], rows["short"]["only_new"])
    assert f"| short | {sum(rows['short'].values())} |" in table and f"{z:+.2f} | {p:.3f} |" in table

    with pytest.raises(ValueError, match="not the same questions"):
        comparison.compare(result("old.json", old), result("other.json", new, digest="d2"))
    with pytest.raises(ValueError, match="no profile 'baseline'"):
        comparison.compare(result("old.json", old), result("fastv.json", new, profile="fastv"))


def test_the_size_diagnosis_splits_single_counts_by_the_objects_size():
    """benchmarks/size_diagnosis.py: count questions with one object to count, split by that
    object's size (found here from the object list and the plural), on hand-made predictions that
    answer "2" when it is large and "1" when it is small."""
    diagnosis = benchmark_module("size_diagnosis")
    samples = scenes.evaluation_questions()
    plural_of = {plural: shape for shape, plural in scenes.PLURALS.items()}
    chosen, sizes = [], {}
    for i, sample in enumerate(samples):
        if sample.question.type in ("count_color", "count_shape") and len(chosen) < 160:
            word = sample.question.text.split()[2]
            objects = scenes.scene_objects(sample.seed)
            matching = [o for o in objects if o.color == word or o.shape == plural_of.get(word)]
            assert len(matching) == int(sample.question.answer), sample.question.text
            chosen.append(i)
            sizes[i] = matching[0].size if len(matching) == 1 else None
    predictions = {i: "Two." if sizes[i] == "large" else "1" for i in chosen}
    found = diagnosis.diagnose({"ids": [_sample_id(samples, i) for i in chosen], "predictions": list(predictions.values())}, samples)
    for kind in ("count_color", "count_shape"):
        small = sum(sizes[i] == "small" and samples[i].question.type == kind for i in chosen)
        large = sum(sizes[i] == "large" and samples[i].question.type == kind for i in chosen)
        assert small and large
        assert found["count_one"][(kind, "small")] == [small, small, 0]
        assert found["count_one"][(kind, "large")] == [0, large, large]


def test_the_size_diagnosis_splits_every_count_by_the_sizes_counted():
    """benchmarks/size_diagnosis.py's count_sizes: every count question by the sizes of the objects it
    counts (found here from the object list), on hand-made predictions that miss one object when a
    large and a small one are counted, count a lone large one as two, and answer every other count
    right."""
    diagnosis = benchmark_module("size_diagnosis")
    samples = scenes.evaluation_questions()
    plural_of = {plural: shape for shape, plural in scenes.PLURALS.items()}
    chosen, expected, predictions = [], Counter(), []
    for i, sample in enumerate(samples[:1200]):
        if sample.question.type not in ("count_color", "count_shape"):
            continue
        word = sample.question.text.split()[2]
        matching = [o for o in scenes.scene_objects(sample.seed) if o.color == word or o.shape == plural_of.get(word)]
        sizes = sorted(o.size for o in matching)
        kind = {(): "none", ("large",): "one large", ("small",): "one small", ("large", "large"): "two large",
                ("large", "small"): "one large, one small", ("small", "small"): "two small"}.get(tuple(sizes), "three or more")  # fmt: skip
        missed, over = kind == "one large, one small", kind == "one large"  # one short; one too many
        chosen.append(i)
        predictions.append(str(len(matching) - 1) if missed else "two" if over else f"{len(matching)}.")
        expected[(sample.question.type, kind, "asked")] += 1
        expected[(sample.question.type, kind, "right")] += not (missed or over)
        expected[(sample.question.type, kind, "short")] += missed
    found = diagnosis.diagnose({"ids": [_sample_id(samples, i) for i in chosen], "predictions": predictions}, samples)
    for (kind, composition), (right, asked, short) in found["count_sizes"].items():
        assert (right, asked, short) == tuple(expected[(kind, composition, c)] for c in ("right", "asked", "short"))
    assert sum(cell[1] for cell in found["count_sizes"].values()) == len(chosen)
    assert found["count_sizes"][("count_shape", "one large, one small")][2] >= 5


def test_the_count_context_probe_asks_one_count_first_and_last():
    """benchmarks/count_context.py: the count question and its 15 companions are drawn from the
    picture's seed alone, all distinct and answerable from the objects (recomputed here); each
    answer's labelled span is found where a hand-made label row puts it; the summary's paired
    counts and per-type tallies are counted here from hand-made results."""
    context = benchmark_module("count_context")
    seed = context.PICTURE_SEED + 3
    objects = scenes.scene_objects(seed)
    count, others = context.turns(seed, objects)
    again = context.turns(seed, objects)
    assert (count, others) == again
    assert count.type in ("count_color", "count_shape") and len(others) == context.OTHER_TURNS
    assert len({q.text for q in [count, *others]}) == 1 + context.OTHER_TURNS
    place = 0 if count.type == "count_color" else 1
    word = count.text.split()[2]
    value = word if place == 0 else next(s for s, plural in scenes.PLURALS.items() if plural == word)
    assert count.answer == str(sum((o.color, o.shape)[place] == value for o in objects))
    conversation = context.messages([count, *others])
    assert conversation[0]["content"][0] == {"type": "image"} and len(conversation) == 32
    assert all(m["content"][0]["type"] == "text" for m in conversation[1:])
    assert conversation[0]["content"][-1]["text"].endswith(scenes.SHORT_ANSWER_SUFFIX)

    import torch

    labels = torch.tensor([-100, 5, 6, -100, -100, 7, -100, 8, 9, 10])
    assert context.answer_spans(labels) == [(1, 3), (5, 6), (7, 10)]
    result = {"first": [True, True, False, False, True], "last": [True, False, True, True, True],
              "types": ["count_color", "count_shape", "count_shape", "count_color", "count_shape"],
              "later_counts": [7, 9]}  # fmt: skip
    summary = context.summary(result)
    assert (summary["only_first"], summary["only_last"], summary["first_right"], summary["last_right"]) == (1, 2, 3, 4)
    assert summary["by_type"] == {"count_color": {"asked": 2, "first": 1, "last": 2},
                                  "count_shape": {"asked": 3, "first": 2, "last": 2}}  # fmt: skip
    assert summary["other_counts_in_count_first_sequences"] == "7/9"


def test_the_count_probe_reads_the_count_where_it_is_written():
    """benchmarks/count_diagnosis.py on made-up decoder states: the count (0, 1, 2, 3 or more,
    recomputed here from the objects, not from the question's answer) is written only at the
    prompt's last token and only from layer 2 on. The probes must find it there and nowhere else,
    the layer chosen on the probe questions must be one where it is written, and the breakdown by
    count and by the lone object's size is counted here by hand."""
    import torch

    diagnosis = benchmark_module("count_diagnosis")
    generator = torch.Generator().manual_seed(0)
    kind = "count_shape"
    train = diagnosis.probe_questions(kind, 200)
    test = [(s.seed, s.question) for s in scenes.evaluation_questions() if s.question.type == kind][:100]
    assert all(diagnosis.PROBE_SEED <= seed < scenes.TRAIN_SEED for seed, _ in train)
    assert diagnosis.PROBE_SEED >= benchmark_module("count_context").PICTURE_SEED + 10_000
    assert all(q.type == kind for _, q in train)

    def truth(seed, question):
        shape = next(s for s, plural in scenes.PLURALS.items() if question.text == f"How many {plural} are there?")
        return min(sum(o.shape == shape for o in scenes.scene_objects(seed)), 3)

    pending = [train, test]  # run_probes reads the probe questions' states, then the test questions'

    def written(loaded, items, log):
        pairs = pending.pop(0)
        assert [q for _, q in items] == [q for _, q in pairs]
        states = torch.randn(len(items), 4, 2, 6, generator=generator)
        for n, (seed, question) in enumerate(pairs):
            states[n, 2:, 1, truth(seed, question)] += 5
        return states

    diagnosis.decoder_states = written
    found = diagnosis.run_probes(None, kind, train, test, lambda message: None)
    assert not pending
    assert found["truth"] == [truth(seed, q) for seed, q in test]
    end, counted = found["layers"]["end"], found["layers"]["counted"]
    assert max(end[:2]) < 0.75 and min(end[2:]) > 0.95
    assert max(counted) < 0.75
    assert found["chosen"]["end"] >= 2
    assert sum(p == t for p, t in zip(found["predicted"]["end"], found["truth"])) >= 95
    shares = Counter(found["truth"])
    assert found["majority"] == pytest.approx(shares[1] / 100)  # "1" is the commonest count

    sizes = [diagnosis.one_object_size(seed, q) for seed, q in test]
    for (seed, q), size in zip(test, sizes):
        shape = next(s for s, plural in scenes.PLURALS.items() if q.text == f"How many {plural} are there?")
        lone = [o for o in scenes.scene_objects(seed) if o.shape == shape]
        assert size == (lone[0].size if len(lone) == 1 else None)
    said = [None, 2, 1, 0, 3]
    split = diagnosis.breakdown(said, [1, 1, 1, 0, 3], ["small", "large", "small", None, None])
    assert split["by count"] == {0: [1, 1], 1: [1, 3], 2: [0, 0], 3: [1, 1]}
    assert split["one object"] == {"small": [1, 2, 0], "large": [0, 1, 1]}
    assert [diagnosis.answer_class(a) for a in ("2", "Two.", "five", "7", "yes")] == [2, 2, 3, 3, None]


def test_the_count_components_group_touching_tokens_and_score_four_classes():
    """benchmarks/count_components.py: groups of marked tokens on the 24 x 24 grid, diagonal
    neighbours joined (8-connected); each object's covered patches labelled with its colour or
    shape, the rest background, worked out here from the discs the objects cover; and the tallies
    of hand-made rows on the four count classes."""
    counter = benchmark_module("count_components")
    board = [False] * 576
    for row, col in [(0, 0), (1, 1), (2, 2), (0, 5), (0, 6), (10, 10), (23, 23), (22, 23)]:
        board[row * 24 + col] = True
    assert counter.components(board) == 4  # a diagonal run, a pair, a single, a vertical pair
    assert counter.components([False] * 576) == 0
    assert counter.components([True] * 576) == 1

    large = scenes.SceneObject("square", "red", "large", 100, 100, 30)
    small = scenes.SceneObject("star", "red", "small", 250, 250, 14)
    covered = {
        i for i in range(576)
        if ((i % 24) * 14 + 7 - 100) ** 2 + ((i // 24) * 14 + 7 - 100) ** 2 < (0.75 * 30) ** 2
    }  # fmt: skip
    shapes = counter.patch_classes([large, small], place=1)
    colours = counter.patch_classes([large, small], place=0)
    background = len(scenes.SHAPES)
    assert {i for i, c in enumerate(shapes) if c == scenes.SHAPES.index("square")} == covered
    assert shapes[(250 // 14) * 24 + 250 // 14] == scenes.SHAPES.index("star")  # the patch under its centre
    assert shapes.count(background) == 576 - len(covered) - shapes.count(scenes.SHAPES.index("star"))
    assert set(colours) == {list(scenes.COLORS).index("red"), len(scenes.COLORS)}
    asks_stars = scenes.Question("count_shape", "How many stars are there?", "1", "There is 1 star.")
    asks_red = scenes.Question("count_color", "How many red objects are there?", "2", "There are 2 red objects.")
    assert counter.component_count(shapes, asks_stars) == 1
    assert counter.component_count(colours, asks_red) == 2  # two red objects apart: two groups

    rows = [
        {"kind": "count_shape", "truth": 1, "size": "large", "grid": 1, "probe": 2, "model": 2},
        {"kind": "count_shape", "truth": 1, "size": "small", "grid": 1, "probe": 1, "model": 1},
        {"kind": "count_shape", "truth": 4, "size": None, "grid": 3, "probe": 5, "model": -1},
        {"kind": "count_color", "truth": 0, "size": None, "grid": 0, "probe": 0, "model": None},
    ]
    found = counter.tally(rows)
    assert found[("count_shape", "grid", "all")] == [3, 3]  # 3 and 4 are both "3 or more"
    assert found[("count_shape", "probe", "all")] == [2, 3]
    assert found[("count_shape", "model", "all")] == [1, 3]  # an answer that is no count is wrong
    assert found[("count_shape", "model", "one large")] == [0, 1]
    assert found[("count_shape", "probe", "one small")] == [1, 1]
    assert found[("count_shape", "model", 3)] == [0, 1]
    assert ("count_color", "model", "all") not in found  # no answer: not scored
    assert counter.model_count("2.") == 2 and counter.model_count("two stars") == -1


def test_the_anchor_marks_are_scored_against_each_objects_first_patch():
    """benchmarks/anchor_marks.py: a picture's marks split into anchors found, false marks on an
    object's other patches and on the background, each object's marks, and the count a sum over the
    asked objects' marks gives; the first patch of an object worked out here from the disc it
    covers. The probe's class weights give each class half the loss, and they are what lets it find
    a class of 1 in 100 (without them it marks far fewer of them)."""
    import torch

    marks_module = benchmark_module("anchor_marks")
    square = scenes.SceneObject("square", "red", "large", 100, 100, 30)
    star = scenes.SceneObject("star", "red", "small", 250, 250, 14)
    covered = [
        i for i in range(576)
        if ((i % 24) * 14 + 7 - 100) ** 2 + ((i // 24) * 14 + 7 - 100) ** 2 < (0.75 * 30) ** 2
    ]  # fmt: skip
    first, other = covered[0], covered[-1]
    background = 0  # the top-left patch: far from both objects
    assert background not in covered
    anchors = marks_module.anchor_labels([square, star])
    assert sum(anchors) == 2 and anchors[first] and not anchors[other]
    marks = [False] * 576
    for place in (first, other, background):
        marks[place] = True
    summary = marks_module.mark_summary(marks, [square, star])
    assert summary == {
        "anchors": 2, "marked anchors": 1, "marks": 3, "false on an object": 1, "false on the background": 1,
        "per object": [2, 0],
    }  # fmt: skip
    asks = {
        "squares": scenes.Question("count_shape", "How many squares are there?", "1", "There is 1 square."),
        "stars": scenes.Question("count_shape", "How many stars are there?", "1", "There is 1 star."),
        "red": scenes.Question("count_color", "How many red objects are there?", "2", "There are 2 red objects."),
    }
    counts = {name: marks_module.marks_count(summary, [square, star], q) for name, q in asks.items()}
    assert counts == {"squares": 2, "stars": 0, "red": 2}  # a large object marked twice counts as two

    labels = torch.tensor([True] * 3 + [False] * 9)
    assert marks_module.balanced_weights(labels).tolist() == pytest.approx([12 / 18, 12 / 6])
    generator = torch.Generator().manual_seed(0)
    y = (torch.arange(2000) < 20).long()  # 20 positives in 2,000
    x = torch.randn(2000, 4, generator=generator) + 1.5 * y[:, None]
    found = {}
    for name, weights in (("plain", None), ("balanced", marks_module.balanced_weights(y))):
        predict = marks_module.fit_probe(x, y, 2, class_weights=weights)
        found[name] = (predict(x)[y == 1] == 1).float().mean().item()
    assert found["balanced"] >= 0.8 and found["plain"] <= found["balanced"] - 0.4, found
