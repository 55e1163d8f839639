"""Where the short answers fail: the small objects. Readings of one `tokentrim eval --dataset scenes`
result, and (`--probe N`) of the default model's own visual features.

    python benchmarks/size_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json
    python benchmarks/size_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json --probe 1500
    python benchmarks/size_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json --probe 1000 --patches

Scenes draw objects in two sizes (scenes.SIZES): a small one (radius 14 px) covers about 2x2 of the
tower's 14-px patches, a large one (30 px) about 4x4. From the eval JSON (nothing is run):

- colour and shape questions: accuracy by the size of the object the question names; existence
  questions by the size of the object asked about when it is there ("large" if any match is) and
  apart when it is not (a near miss: the colour or the shape of an object there, paired wrongly);
- "describe the picture": recall of small and of large objects (objects whose colour and shape are
  unique in their picture, so that a named pair is that object);
- count questions: accuracy by the true count, and, where the same picture was also described,
  whether the description names as many objects of that colour (shape) as there are: whether the
  count fails in the short answer alone or in what the model sees; the count questions with
  one object to count, by that object's size: how often it is counted right, and how often as
  more than one; and every count question by the sizes of the objects it counts (none, one large,
  one small, two large, one large and one small, two small, three or more): how often it is right,
  and how often it is answered one short (an object missed).

`--probe N` then asks where a small object's colour and shape get lost. It fits linear probes
(multinomial logistic regression on each object's mean feature over the patches it covers, the
patches the training script's stage 0 uses) on N pictures of their own seed space, for two
features of the default model: the frozen vision tower's output at the layer the model reads
(`vision_feature_layer`) and the projector's output (the visual tokens the decoder reads). Their
accuracy on the evaluation pictures' objects, small and large apart, says whether the information
is there for the decoder to use: a probe near 100% where the model's answers are at 80% puts the
loss in the decoder (training), a probe near the answers puts it in the features. Two more probes
read whether an object lies left or right (top or bottom) of the middle from the features alone,
without the token's place in the sequence: what the spatial questions compare. With `--patches`
the same probes read every patch an object covers alone (each labelled with that object), not the
object's mean: whether a single visual token carries its object's colour and shape, or only the
object's patches together do. Needs the carrier packages (tokentrim_cli/assembly.py); ~3 minutes
of tower forwards per 1,000 pictures on 2 cores.

Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tokentrim_cli import scenes  # noqa: E402
from tokentrim_cli.benchmarks import scenes_question  # noqa: E402

PROBE_SEED = 970_000  # the probes' training pictures: past compare_trained's (960,000 up), below TRAIN_SEED
SIZES = tuple(scenes.SIZES)


def asked_object(question: scenes.Question, objects: list[scenes.SceneObject]) -> scenes.SceneObject:
    """The object a colour or shape question names ("What color is the small star?": the one
    object whose name without its colour is "small star")."""
    name = question.text.removeprefix("What color is the ").removeprefix("What shape is the ").removesuffix("?")
    naming = scenes.name_without_color if question.type == "color" else scenes.name_without_shape
    (found,) = [o for o in objects if naming(o, objects) == name]
    return found


def counted(question: scenes.Question) -> tuple[int, str]:
    """What a count question counts: (0, colour) or (1, shape), the place of that word in a
    (colour, shape) pair."""
    word = question.text.split()[2]  # "How many red objects are there?", "How many stars are there?"
    if question.type == "count_color":
        return 0, word
    return 1, next(s for s, plural in scenes.PLURALS.items() if plural == word)


def counted_objects(question: scenes.Question, objects: list[scenes.SceneObject]) -> list[scenes.SceneObject]:
    """The objects a count question counts (those of its colour, or of its shape)."""
    place, value = counted(question)
    return [o for o in objects if (o.color, o.shape)[place] == value]


def asked_count(question: scenes.Question, description: str) -> int:
    """How many objects of the counted colour (or shape) a description names."""
    place, value = counted(question)
    return sum(pair[place] == value for pair in scenes.mentioned_objects(description))


COMPOSITIONS = ("none", "one large", "one small", "two large", "one large, one small", "two small", "three or more")


def composition(counted: list[scenes.SceneObject]) -> str:
    """The sizes of the objects a count question counts, as one of COMPOSITIONS."""
    if len(counted) > 2:
        return "three or more"
    if not counted:
        return "none"
    sizes = {o.size for o in counted}
    if len(sizes) == 2:
        return "one large, one small"
    return f"{'one' if len(counted) == 1 else 'two'} {sizes.pop()}"


def existence_case(question: scenes.Question, objects: list[scenes.SceneObject]) -> str:
    """"small" or "large" (the size of the object asked about; "large" if any match is) when it is
    there, "absent" when it is not."""
    colour, shape = question.text.removesuffix("?").split()[-2:]
    sizes = {o.size for o in objects if (o.color, o.shape) == (colour, shape)}
    return "absent" if not sizes else "large" if "large" in sizes else "small"


def diagnose(profile: dict, samples: list[scenes.SceneSample]) -> dict:
    """{"named": {(type, size): [right, asked]} (type "exist" also with size "absent"),
    "describe": {size: [found, objects]},
    "count": {(type, truth): [right, asked]}, "count_vs_description": {(type, description right,
    short answer right): questions}, "count_one": {(type, size): [right, asked, answered more than
    one]} (the count questions with one object to count, by that object's size), "count_sizes":
    {(type, composition): [right, asked, answered one short]} (every count question, by the sizes of
    the objects it counts: COMPOSITIONS)} for one profile of an eval JSON."""
    named: dict = {(t, s): [0, 0] for t in ("color", "shape", "exist") for s in SIZES} | {("exist", "absent"): [0, 0]}
    described = {s: [0, 0] for s in SIZES}
    count: dict = {}
    descriptions: dict[int, str] = {}  # by picture seed
    asked: list[tuple[scenes.SceneSample, str]] = []
    for sample_id, prediction in zip(profile["ids"], profile["predictions"]):
        sample = scenes_question(sample_id, samples)
        question = sample.question
        if question.type == "describe":
            descriptions[sample.seed] = prediction
            objects = scenes.scene_objects(sample.seed)
            said = Counter(scenes.mentioned_objects(prediction))
            for o in objects:
                if scenes.unique_name(o, objects) == f"{o.color} {o.shape}":
                    described[o.size][0] += said[(o.color, o.shape)] > 0
                    described[o.size][1] += 1
        elif question.type in ("color", "shape"):
            cell = named[(question.type, asked_object(question, scenes.scene_objects(sample.seed)).size)]
            cell[0] += scenes.normalize_short(prediction) == question.answer
            cell[1] += 1
        elif question.type == "exist":
            cell = named[("exist", existence_case(question, scenes.scene_objects(sample.seed)))]
            cell[0] += scenes.normalize_short(prediction) == question.answer
            cell[1] += 1
        elif question.type in ("count_color", "count_shape"):
            asked.append((sample, prediction))
    versus: Counter = Counter()
    one: dict = {(t, s): [0, 0, 0] for t in ("count_color", "count_shape") for s in SIZES}
    by_sizes: dict = {(t, c): [0, 0, 0] for t in ("count_color", "count_shape") for c in COMPOSITIONS}
    for sample, prediction in asked:
        question = sample.question
        said = scenes.normalize_short(prediction)
        right = said == question.answer
        those = counted_objects(question, scenes.scene_objects(sample.seed))  # placed once per question
        cell = by_sizes[(question.type, composition(those))]
        cell[0] += right
        cell[1] += 1
        cell[2] += said == str(int(question.answer) - 1)
        cell = count.setdefault((question.type, int(question.answer)), [0, 0])
        cell[0] += right
        cell[1] += 1
        if sample.seed in descriptions:
            versus[(question.type, asked_count(question, descriptions[sample.seed]) == int(question.answer), right)] += 1
        if question.answer == "1":
            cell = one[(question.type, those[0].size)]
            cell[0] += right
            cell[1] += 1
            cell[2] += said.isdigit() and int(said) > 1
    return {"named": named, "describe": described, "count": count, "count_vs_description": dict(versus),
            "count_one": one, "count_sizes": by_sizes}  # fmt: skip


# ---- the probes ---------------------------------------------------------------------------------


def patch_owners(patches: int, objects: list[scenes.SceneObject]):
    """Per patch of a square grid of `patches` (row-major), the index of the object covering it, or -1."""
    import torch
    from train_scenes_model import patch_objects

    grid = int(round(patches**0.5))
    return torch.tensor(patch_objects(objects, grid, scenes.SIZE / grid))


def object_means(features, objects: list[scenes.SceneObject]):
    """(objects, D): each object's mean feature over the patches it covers (row-major patches)."""
    import torch

    owner = patch_owners(features.shape[0], objects)
    return torch.stack([features[owner == i].float().mean(0) for i in range(len(objects))])


def object_patches(features, objects: list[scenes.SceneObject]):
    """((patches covered by an object, D), the object covering each): every covered patch alone."""
    owner = patch_owners(features.shape[0], objects)
    covered = (owner >= 0).nonzero().squeeze(1)
    return features[covered].float(), [objects[i] for i in owner[covered].tolist()]


def read_scenes_result(path: Path) -> dict:
    """A `tokentrim eval --dataset scenes` result JSON; exits with a one-line message for any other
    dataset's result."""
    document = json.loads(path.read_text())
    if not document["dataset"].startswith("scenes"):
        sys.exit(f"{path}: not a scenes evaluation ({document['dataset']!r})")
    return document


def fit_probe(train_x, train_y, classes: int, steps: int = 300, weight_decay: float = 1e-3, class_weights=None):
    """A multinomial logistic regression on standardised features (L-BFGS, full batch); returns
    a function from features to predicted classes. `class_weights` (one per class) weighs each
    class's share of the loss, for classes as unequal as anchors among visual tokens."""
    import torch

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = (train_x - mean) / std
    torch.manual_seed(0)  # the starting point (the optimum is unique; this makes the digits repeat)
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), train_y, weight=class_weights) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda features: linear((features - mean) / std).argmax(-1)


def visual_batches(model, processor, seeds: list[int], size: int = 8):
    """Per batch of `size` pictures: the tower's patch features at the model's feature layer (no
    CLS), the projector's output of them (both under bf16 autocast, as the evaluation runs), and each
    picture's objects."""
    import torch

    layer = model.config.vision_feature_layer
    for start in range(0, len(seeds), size):
        drawn = [scenes.scene(seed) for seed in seeds[start : start + size]]
        pixels = processor.image_processor([image for image, _ in drawn], return_tensors="pt")["pixel_values"]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            tower = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
            projected = model.model.multi_modal_projector(tower)
        yield tower, projected, [objects for _, objects in drawn]


def probe_features(model, processor, seeds: list[int], pooling: str = "object") -> tuple[dict, list[scenes.SceneObject]]:
    """{"tower": (rows, D), "projector": (rows, D')} and the object of each row, over every object
    of the pictures: a row is an object's mean over its patches (pooling "object") or one patch an
    object covers (pooling "patch")."""
    import torch

    found: dict[str, list] = {"tower": [], "projector": []}
    every: list[scenes.SceneObject] = []
    for tower, projected, drawn in visual_batches(model, processor, seeds):
        width = tower.shape[-1]
        for n, objects in enumerate(drawn):
            # one pooling (patch_objects walks every patch per object) for both features, side by side
            both = torch.cat([tower[n].float(), projected[n].float()], dim=-1)
            if pooling == "object":
                rows, owners = object_means(both, objects), objects
            else:
                rows, owners = object_patches(both, objects)
            found["tower"].append(rows[:, :width])
            found["projector"].append(rows[:, width:])
            every += owners
    return {name: torch.cat(parts) for name, parts in found.items()}, every


ATTRIBUTES = {"colour": len(scenes.COLORS), "shape": len(scenes.SHAPES), "left or right": 2, "top or bottom": 2}


def attribute_label(o: scenes.SceneObject, attribute: str) -> int | None:
    """The class a probe should read from an object's features. Left or right (top or bottom) of the
    picture's middle, as train_scenes_model.position_question asks it: objects whose centre lies
    within RELATION_GAP of the middle line are left out (None)."""
    if attribute == "colour":
        return list(scenes.COLORS).index(o.color)
    if attribute == "shape":
        return scenes.SHAPES.index(o.shape)
    where = o.x if attribute == "left or right" else o.y
    if abs(where - scenes.SIZE / 2) < scenes.RELATION_GAP:
        return None
    return int(where > scenes.SIZE / 2)


def run_probes(train_pictures: int, weights: Path, log, pooling: str = "object") -> dict:
    """{(feature, attribute, size): [right, rows]} on the evaluation pictures' objects (pooling
    "object": one row per object) or on their patches (pooling "patch": one row per covered patch)."""
    import torch
    from safetensors.torch import load_file

    from tokentrim_cli import assembly

    model, processor = assembly.build_base(log, seed=0)
    model.model.multi_modal_projector.load_state_dict(load_file(weights / assembly.PROJECTOR_FILE))
    model.eval()
    log(f"tower features of {train_pictures} probe pictures")
    train, train_objects = probe_features(model, processor, [PROBE_SEED + i for i in range(train_pictures)], pooling)
    log(f"tower features of the {scenes.EVAL_PICTURES} evaluation pictures")
    test, test_objects = probe_features(model, processor, [scenes.EVAL_SEED + i for i in range(scenes.EVAL_PICTURES)], pooling)
    out = {}
    for attribute in ATTRIBUTES:
        for feature in ("tower", "projector"):
            train_rows = [n for n, o in enumerate(train_objects) if attribute_label(o, attribute) is not None]
            test_rows = [n for n, o in enumerate(test_objects) if attribute_label(o, attribute) is not None]
            train_labels = torch.tensor([attribute_label(train_objects[n], attribute) for n in train_rows])
            test_labels = torch.tensor([attribute_label(test_objects[n], attribute) for n in test_rows])
            predict = fit_probe(train[feature][train_rows], train_labels, ATTRIBUTES[attribute])
            with torch.no_grad():
                right = (predict(test[feature][test_rows]) == test_labels).tolist()
            for size in SIZES:
                mine = [r for r, n in zip(right, test_rows) if test_objects[n].size == size]
                out[(feature, attribute, size)] = [sum(mine), len(mine)]
    return out


# ---- the report ---------------------------------------------------------------------------------


def percent(cell) -> str:
    return f"{100 * cell[0] / max(cell[1], 1):.1f}% of {cell[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", type=Path)
    parser.add_argument("--profile", default="baseline")
    parser.add_argument("--probe", type=int, default=0, metavar="N", help="also fit the probes on N pictures")
    parser.add_argument("--patches", action="store_true",
                        help="probe every patch an object covers alone, not each object's mean over them")  # fmt: skip
    parser.add_argument("--weights", type=Path, default=ROOT / "tokentrim_cli" / "scenes_model",
                        help="the trained projector's folder (for the projector's probe)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    document = read_scenes_result(args.eval_json)
    profiles = [p for p in document["profiles"] if p["profile"] == args.profile]
    if not profiles:
        sys.exit(f"{args.eval_json}: no profile {args.profile!r}")
    found = diagnose(profiles[0], scenes.evaluation_questions())

    print(f"### {args.eval_json.name}, profile {args.profile}\n")
    print("| object size | colour question | shape question | existence (object there) | describe recall |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        print(f"| {size} | {percent(found['named'][('color', size)])} | {percent(found['named'][('shape', size)])} | "
              f"{percent(found['named'][('exist', size)])} | {percent(found['describe'][size])} |")  # fmt: skip
    print(f"| (not there) | | | {percent(found['named'][('exist', 'absent')])} | |")
    print("\n| count question | " + " | ".join(f"true count {n}" for n in range(5)) + " |")
    print("|---|" + "---|" * 5)
    for kind in ("count_color", "count_shape"):
        print(f"| {kind} | " + " | ".join(percent(found["count"].get((kind, n), [0, 0])) for n in range(5)) + " |")
    print("\n| count question, picture also described | description's count right | "
          "short answer right | both | neither |")  # fmt: skip
    print("|---|---|---|---|---|")
    versus = found["count_vs_description"]
    for kind in ("count_color", "count_shape"):
        cells = [versus.get((kind, d, s), 0) for d, s in ((True, False), (False, True), (True, True), (False, False))]
        total = max(sum(cells), 1)
        description_right, short_right = cells[0] + cells[2], cells[1] + cells[2]
        print(f"| {kind} ({sum(cells)}) | {100 * description_right / total:.0f}% | {100 * short_right / total:.0f}% | "
              f"{100 * cells[2] / total:.0f}% | {100 * cells[3] / total:.0f}% |")  # fmt: skip

    print("\n| count question, one object there | " + " | ".join(f"{size}: right | {size}: counted more" for size in SIZES)
          + " |")  # fmt: skip
    print("|---|" + "---|---|" * len(SIZES))
    for kind in ("count_color", "count_shape"):
        cells = [found["count_one"][(kind, size)] for size in SIZES]
        print(f"| {kind} | " + " | ".join(f"{percent(c[:2])} | {100 * c[2] / max(c[1], 1):.1f}%" for c in cells) + " |")

    print("\n| objects counted | count of a colour: right | answered one short | count of a shape: right | "
          "answered one short |")  # fmt: skip
    print("|---|---|---|---|---|")
    for kind in COMPOSITIONS:
        color, shape = found["count_sizes"][("count_color", kind)], found["count_sizes"][("count_shape", kind)]
        print(f"| {kind} | {color[0]}/{color[1]} | {color[2]} | {shape[0]}/{shape[1]} | {shape[2]} |")

    if args.probe:
        import torch

        from tokentrim_cli.model import slow_cpu_dtype_warning

        torch.set_num_threads(args.threads)
        if warning := slow_cpu_dtype_warning("bfloat16", "cpu"):  # the probes' features are computed in bf16
            print(f"Warning: {warning}", file=sys.stderr)
        pooling = "patch" if args.patches else "object"
        log = lambda message: print(f"<!-- {message} -->", file=sys.stderr)  # noqa: E731
        probes = run_probes(args.probe, args.weights, log, pooling)
        rows = "single patches an object covers" if args.patches else "objects (each its mean over the patches it covers)"
        print(f"\nLinear probes ({args.probe} probe pictures, seeds {PROBE_SEED} up; tested on the evaluation "
              f"pictures' {rows}; weights {args.weights.name}):\n")  # fmt: skip
        print("| feature | " + " | ".join(f"{a}, {s}" for a in ATTRIBUTES for s in SIZES) + " |")
        print("|---|" + "---|" * (len(ATTRIBUTES) * len(SIZES)))
        for feature in ("tower", "projector"):
            cells = [percent(probes[(feature, a, s)]) for a in ATTRIBUTES for s in SIZES]
            print(f"| {feature} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
