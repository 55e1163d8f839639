"""The evaluation sets tokentrim speaks: their samples, prompts and scoring rules.

- `jsonl` (`--data FILE`): {"image", "prompt", "answer"} lines, exact match (case, whitespace and a
  final period ignored);
- `scenes`: the built-in testbed (scenes.py), regenerated from seeds: short answers by exact match
  (normalised), "describe the picture" by object recall and precision, reported apart;
- `easy-vqa`: a seeded sample of easy-VQA's questions (PyPI easy-vqa), exact match;
- the suite pruning papers report, read with the `datasets` library from the Hub or from a local
  copy (`--dataset-path`: a `save_to_disk` folder or parquet files in the Hub schema), with the
  prompts LLaVA-1.5 was evaluated with and the official scoring rules (read from lmms-eval's task
  definitions and LLaVA's evaluators):
  * `pope` (lmms-lab/POPE): yes/no; accuracy, precision, recall, F1, yes-ratio, per split
    (adversarial, popular, random); a reply is "no" when its first sentence has the word no, No or
    not (LLaVA's eval_pope), else "yes";
  * `mme` (lmms-lab/MME): perception and cognition scores: per subtask, accuracy plus accuracy+
    (both questions of an image right), x100, summed over the subtasks of each group;
  * `gqa` (lmms-lab/GQA, testdev balanced): exact match, case and punctuation ignored;
  * `scienceqa-img` (lmms-lab/ScienceQA, ScienceQA-IMG test): the option letter (exact, or "A. ..."),
    per subject;
  * `textvqa` (lmms-lab/textvqa, validation): VQA accuracy over the 10 human answers
    (min(1, matches / 3) averaged over the 10 leave-one-out subsets), EvalAI's answer normalisation;
    the prompt carries the OCR tokens, as LLaVA-1.5's evaluation did.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
import string
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import EnvironmentProblem, InputError, UsageError

if TYPE_CHECKING:
    from .scenes import SceneSample

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt


@dataclass
class EvalSample:
    id: str
    image: object | None  # something with .load() -> LoadedImage (decoded when its batch runs); None: text only
    prompt: str
    answers: list[str]
    category: str | None = None
    extra: dict = field(default_factory=dict)  # what a benchmark's scoring needs (MME's pairing, scenes' objects)
    # The answer's length cap when the benchmark knows it per sample (scenes: a word, or a
    # description); None: the benchmark's. Batches group samples of one cap, so a batch of short
    # answers never decodes as long as a description.
    max_new_tokens: int | None = None


@dataclass
class EvalSet:
    samples: list[EvalSample]
    name: str
    sha256: str
    benchmark: str


@dataclass
class Summary:
    """A benchmark's headline score and the rest of its metrics, overall and per category."""

    score: float  # the headline (accuracy, MME's summed score, VQA accuracy ...)
    score_name: str
    metrics: dict[str, float]
    categories: dict[str, dict[str, float]] = field(default_factory=dict)


# ---- answer normalisation and per-sample scores ---------------------------------------------------


def normalize(text: str) -> str:
    """Case, surrounding and repeated whitespace, and a final period do not count."""
    return re.sub(r"\s+", " ", text).strip().lower().removesuffix(".").strip()


def exact_match(prediction: str, answers: list[str]) -> float:
    return float(normalize(prediction) in {normalize(a) for a in answers})


def strip_punctuation(text: str) -> str:
    """lmms-eval's exact_match with ignore_case and ignore_punctuation (GQA)."""
    return text.strip().lower().translate(str.maketrans("", "", string.punctuation))


def pope_label(prediction: str) -> str:
    """LLaVA's eval_pope: the first sentence, commas dropped; "no" if it has the word No, no or not."""
    text = prediction.split(".")[0] if "." in prediction else prediction
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def mme_label(prediction: str) -> str:
    """lmms-eval's MME parser (from Otter): yes / no / other."""
    answer = prediction.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer, "other")
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def scienceqa_correct(prediction: str, letter: str) -> float:
    """lmms-eval's ScienceQA rule: the reply is the letter, or starts with "X." for letter X."""
    prediction = prediction.strip()
    if prediction.lower() == letter.lower():
        return 1.0
    if len(prediction) >= 2 and prediction[0].isupper() and prediction[1] == ".":
        return float(prediction[0].lower() == letter.lower())
    return 0.0


# EvalAI's VQA answer processor (the official VQA evaluation), restated.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = ("a", "an", "the")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_PUNCTUATION = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def vqa_normalize(answer: str) -> str:
    """EvalAI's answer processing: lower case, punctuation, digits for number words, no articles,
    contractions restored."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    out = answer
    for mark in _PUNCTUATION:
        if (mark + " " in answer or " " + mark in answer) or _COMMA_STRIP.search(answer) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split() if _NUMBERS.get(w, w) not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """min(1, matches among the other 9 answers / 3), averaged over the 10 leave-one-out subsets."""
    predicted = vqa_normalize(prediction)
    truths = [vqa_normalize(a) for a in answers]
    scores = []
    for i in range(len(truths)):
        others = truths[:i] + truths[i + 1 :]
        scores.append(min(1.0, sum(t == predicted for t in others) / 3))
    return statistics.mean(scores)


# ---- benchmarks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    max_new_tokens: int
    correct: Callable[[str, EvalSample], float]  # per-sample score in [0, 1]
    summarize: Callable[[list[str], list[EvalSample]], Summary]
    hub_id: str | None = None
    splits: tuple[str, ...] = ()
    default_split: str | None = None


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _by_category(predictions, samples, score) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for prediction, sample in zip(predictions, samples):
        if sample.category is not None:
            groups[sample.category].append(score(prediction, sample))
    return {name: {"accuracy": _mean(values), "samples": len(values)} for name, values in sorted(groups.items())}


def _accuracy_summary(correct):
    def summarize(predictions, samples) -> Summary:
        scores = [correct(p, s) for p, s in zip(predictions, samples)]
        return Summary(_mean(scores), "accuracy", {"accuracy": _mean(scores)}, _by_category(predictions, samples, correct))

    return summarize


def pope_metrics(predictions: list[str], answers: list[str]) -> dict[str, float]:
    labels = [pope_label(p) for p in predictions]
    pairs = list(zip(labels, (a.strip().lower() for a in answers)))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(pairs) if pairs else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": labels.count("yes") / len(labels) if labels else 0.0}  # fmt: skip


def _pope_summary(predictions, samples) -> Summary:
    overall = pope_metrics(predictions, [s.answers[0] for s in samples])
    groups = defaultdict(list)
    for p, s in zip(predictions, samples):
        groups[s.category or "all"].append((p, s.answers[0]))
    categories = {name: pope_metrics([p for p, _ in rows], [a for _, a in rows]) | {"samples": len(rows)}
                  for name, rows in sorted(groups.items())}  # fmt: skip
    return Summary(overall["f1"], "F1", overall, categories)


MME_GROUPS = {
    "perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}


def mme_scores(predictions: list[str], samples: list[EvalSample]) -> dict[str, float]:
    """Per subtask: mean over images of (accuracy + accuracy+) x 100; perception and cognition sums."""
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for prediction, sample in zip(predictions, samples):
        correct = float(mme_label(prediction) == sample.answers[0].lower().strip().replace(".", ""))
        by_category[sample.category][sample.extra["image_id"]].append(correct)
    scores = {}
    for category, images in by_category.items():
        totals = []
        for image_id, results in images.items():
            if len(results) != 2:
                raise InputError(f"MME image '{image_id}' has {len(results)} questions in this run (pairs of 2 are needed)",
                                 hint="run MME without --limit, or with a --limit that keeps pairs (even counts from the start)")  # fmt: skip
            totals.append(sum(results) / 2 * 100 + (sum(results) == 2) * 100)
        scores[category] = _mean(totals)
    scores["perception"] = sum(v for k, v in scores.items() if k in MME_GROUPS["perception"])
    scores["cognition"] = sum(v for k, v in scores.items() if k in MME_GROUPS["cognition"])
    return scores


def _mme_summary(predictions, samples) -> Summary:
    scores = mme_scores(predictions, samples)
    categories = {k: {"score": v} for k, v in scores.items() if k not in ("perception", "cognition")}
    total = scores["perception"] + scores["cognition"]
    return Summary(total, "perception + cognition", {"perception": scores["perception"], "cognition": scores["cognition"],
                                                      "total": total}, categories)  # fmt: skip


def _scenes_correct(prediction: str, sample: EvalSample) -> float:
    from .scenes import normalize_short

    if sample.category == "describe":
        return sample_describe_scores(prediction, sample)[0]
    return float(normalize_short(prediction) == normalize_short(sample.answers[0]))


def sample_describe_scores(prediction: str, sample: EvalSample) -> tuple[float, float]:
    from .scenes import SceneObject, describe_scores

    objects = [SceneObject(**o) for o in sample.extra["objects"]]
    return describe_scores(prediction, objects)


def _scenes_summary(predictions, samples) -> Summary:
    short = [(p, s) for p, s in zip(predictions, samples) if s.category != "describe"]
    describe = [(p, s) for p, s in zip(predictions, samples) if s.category == "describe"]
    accuracy = _mean(_scenes_correct(p, s) for p, s in short)
    scores = [sample_describe_scores(p, s) for p, s in describe]
    metrics = {"short_answer_accuracy": accuracy, "short_answer_samples": len(short)}
    if describe:
        metrics |= {"describe_recall": _mean(r for r, _ in scores), "describe_precision": _mean(p for _, p in scores),
                    "describe_samples": len(describe)}  # fmt: skip
    categories = _by_category([p for p, _ in short], [s for _, s in short], _scenes_correct)
    if describe:
        categories["describe"] = {"recall": metrics["describe_recall"], "precision": metrics["describe_precision"],
                                  "samples": len(describe)}  # fmt: skip
    return Summary(accuracy, "short-answer accuracy", metrics, categories)


def _letter(sample: EvalSample) -> str:
    return sample.answers[0]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("jsonl", "a JSONL file (--data): exact match", 16, lambda p, s: exact_match(p, s.answers),
                  _accuracy_summary(lambda p, s: exact_match(p, s.answers))),
        Benchmark("scenes", "the built-in scenes testbed: short answers and descriptions", 64, _scenes_correct,
                  _scenes_summary, splits=("test",), default_split="test"),
        Benchmark("easy-vqa", "a seeded sample of easy-VQA (pip install easy-vqa)", 16, lambda p, s: exact_match(p, s.answers),
                  _accuracy_summary(lambda p, s: exact_match(p, s.answers)), splits=("train", "test"), default_split="test"),
        Benchmark("pope", "POPE: object hallucination, yes/no", 16, lambda p, s: float(pope_label(p) == s.answers[0].lower()),
                  _pope_summary, "lmms-lab/POPE", ("test", "adversarial", "popular", "random"), "test"),
        Benchmark("mme", "MME: perception and cognition, yes/no in pairs", 16,
                  lambda p, s: float(mme_label(p) == s.answers[0].lower().strip().replace(".", "")), _mme_summary,
                  "lmms-lab/MME", ("test",), "test"),
        Benchmark("gqa", "GQA testdev balanced: exact match", 16,
                  lambda p, s: float(strip_punctuation(p) == strip_punctuation(s.answers[0])),
                  _accuracy_summary(lambda p, s: float(strip_punctuation(p) == strip_punctuation(s.answers[0]))),
                  "lmms-lab/GQA", ("testdev",), "testdev"),
        Benchmark("scienceqa-img", "ScienceQA-IMG test: the option letter", 16,
                  lambda p, s: scienceqa_correct(p, _letter(s)),
                  _accuracy_summary(lambda p, s: scienceqa_correct(p, _letter(s))), "lmms-lab/ScienceQA", ("test",), "test"),
        Benchmark("textvqa", "TextVQA validation: VQA accuracy over 10 answers", 16, lambda p, s: vqa_accuracy(p, s.answers),
                  _accuracy_summary(lambda p, s: vqa_accuracy(p, s.answers)), "lmms-lab/textvqa", ("validation",), "validation"),
    )  # fmt: skip
}
NAMED = tuple(name for name in BENCHMARKS if name != "jsonl")


def get_benchmark(name: str) -> Benchmark:
    if name not in NAMED:
        raise UsageError(f"unknown dataset '{name}'; supported: {', '.join(NAMED)}")
    return BENCHMARKS[name]


# ---- loading -------------------------------------------------------------------------------------------


def sample_indices(total: int, *, limit: int | None, seed: int) -> list[int]:
    """The indices of a seeded sample, ascending (all of them without a limit)."""
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), limit))


def load_jsonl(path: str, *, limit: int | None = None) -> EvalSet:
    """{"image": PATH|URL, "prompt": ..., "answer": str | [str, ...]} per line (image optional: a
    text-only sample); relative image paths resolve against the file."""
    from .inputs import read_image_records

    def answers(record: dict):
        value = record.get("answer")
        return [value] if isinstance(value, str) else value if isinstance(value, list) else None

    def valid(record: dict) -> bool:
        found = answers(record)
        return isinstance(record.get("prompt"), str) and bool(found) and all(isinstance(a, str) for a in found)

    pairs, sha256 = read_image_records(
        path, valid=valid, expected='{"image": "...", "prompt": "...", "answer": "..." or [...]}', limit=limit,
        image_optional=True,
    )  # fmt: skip
    samples = [EvalSample(str(i), image, record["prompt"], answers(record), record.get("category"))
               for i, (record, image) in enumerate(pairs)]  # fmt: skip
    return EvalSet(samples, path, sha256, "jsonl")


SCENES_SHORT_TOKENS = 10  # a word or a number, and the end token
SCENES_DESCRIBE_TOKENS = 96  # eight objects named in sentences take about 60


def scenes_question(sample_id: str, questions: list[SceneSample]) -> SceneSample:
    """The question of scenes.evaluation_questions() that a load_scenes sample id ("{seed}-{index}",
    as eval's JSON keeps it) names; an id whose seed does not match is from another set."""
    seed, index = map(int, sample_id.split("-"))
    if not 0 <= index < len(questions) or questions[index].seed != seed:
        raise ValueError(f"{sample_id}: not a question of this scenes set")
    return questions[index]


def load_scenes(*, limit: int | None, seed: int) -> EvalSet:
    """The fixed scenes evaluation set (scenes.evaluation_questions), or a seeded sample of it."""
    import dataclasses

    from . import scenes

    questions = scenes.evaluation_questions()
    order = sample_indices(len(questions), limit=limit, seed=seed)
    samples = []
    for i in order:
        item = questions[i]
        objects = scenes.scene_objects(item.seed)  # for describe's scoring
        samples.append(EvalSample(
            f"{item.seed}-{i}", scenes.SceneImage(item.seed), item.question.prompt, [item.question.answer],
            item.question.type, {"objects": [dataclasses.asdict(o) for o in objects]},
            max_new_tokens=SCENES_DESCRIBE_TOKENS if item.question.type == "describe" else SCENES_SHORT_TOKENS,
        ))  # fmt: skip
    digest = hashlib.sha256(json.dumps([[s.id, s.prompt, s.answers] for s in samples]).encode())
    name = f"scenes ({len(samples)} of {len(questions)} questions, seed {seed})" if limit else f"scenes ({len(samples)} questions)"
    return EvalSet(samples, name, digest.hexdigest(), "scenes")


def load_easy_vqa(split: str, *, limit: int | None, seed: int) -> EvalSet:
    """A fixed, seeded sample of easy-VQA's questions (PyPI `easy-vqa`, MIT)."""
    from .inputs import ImageRef

    try:
        import easy_vqa
    except ImportError:
        raise EnvironmentProblem("--dataset easy-vqa needs the easy-vqa package",
                                 hint="pip install easy-vqa (or, in a checkout: pip install -e '.[eval]')") from None  # fmt: skip
    if split not in ("train", "test"):
        raise UsageError(f"--split for easy-vqa must be train or test, got '{split}'")
    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    order = sample_indices(len(questions), limit=limit, seed=seed)
    samples = [EvalSample(str(i), ImageRef(paths[image_ids[i]], f"easy-vqa {split} question {i}"), questions[i], [answers[i]])
               for i in order]  # fmt: skip
    digest = hashlib.sha256(json.dumps([split, seed, order]).encode())
    return EvalSet(samples, f"easy-vqa {split} ({len(samples)} of {len(questions)}, seed {seed})", digest.hexdigest(), "easy-vqa")


@dataclass
class DatasetImage:
    """A picture inside a `datasets` row, decoded when used."""

    rows: object  # the datasets.Dataset
    index: int
    column: str = "image"
    where: str = ""

    @property
    def source(self) -> str:
        return self.where

    def load(self):
        from .inputs import LoadedImage, decode_image

        value = self.rows[self.index][self.column]
        try:
            if hasattr(value, "convert"):  # datasets decoded it (a PIL image)
                if max(value.size) / max(1, min(value.size)) > 20 or value.size[0] * value.size[1] > 64_000_000:
                    raise InputError(f"{self.where}: refused: {value.size[0]}x{value.size[1]} is an extreme or huge picture")
                return LoadedImage(self.where, value.convert("RGB"))
            if isinstance(value, dict) and value.get("bytes"):
                return LoadedImage(self.where, decode_image(value["bytes"], self.where))
        except InputError:
            raise
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{self.where}: the image cannot be decoded ({e})") from None
        raise InputError(f"{self.where}: no image in column '{self.column}'")


REQUIRED_COLUMNS = {
    "pope": ("question_id", "question", "answer", "image"),
    "mme": ("question_id", "question", "answer", "category", "image"),
    "gqa": ("id", "question", "answer", "image"),
    "scienceqa-img": ("question", "choices", "answer", "hint", "image"),
    "textvqa": ("question_id", "question", "answers", "image"),
}


def load_hub_benchmark(name: str, *, path: str | None, split: str | None, limit: int | None, seed: int,
                       offline: bool) -> EvalSet:  # fmt: skip
    """One of the paper suite, from the Hub (`datasets.load_dataset`) or a local copy."""
    benchmark = get_benchmark(name)
    split = split or benchmark.default_split
    if split not in benchmark.splits:
        raise UsageError(f"--split for {name} must be one of {', '.join(benchmark.splits)}, got '{split}'")
    rows = _rows(name, benchmark, path=path, split=split, offline=offline)
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in rows.column_names]
    if missing:
        where = path or benchmark.hub_id
        raise InputError(f"{where}: not the {name} schema: missing column '{missing[0]}' (has {', '.join(rows.column_names)})")
    order = sample_indices(len(rows), limit=limit, seed=seed)
    build = {"pope": _pope_sample, "mme": _mme_sample, "gqa": _gqa_sample, "scienceqa-img": _scienceqa_sample,
             "textvqa": _textvqa_sample}[name]  # fmt: skip
    rows_without_images = rows.remove_columns(["image"])  # reading metadata must not decode every picture
    samples = [build(rows, rows_without_images[i], i, name) for i in order]
    fingerprint = getattr(rows, "_fingerprint", None) or ""
    digest = hashlib.sha256(json.dumps([name, split, fingerprint, seed, order]).encode())
    return EvalSet(samples, f"{name} {split} ({len(samples)} of {len(rows)}{f', seed {seed}' if limit else ''})",
                   digest.hexdigest(), name)  # fmt: skip


def _rows(name: str, benchmark: Benchmark, *, path: str | None, split: str, offline: bool):
    import os

    try:
        import datasets
    except ImportError:
        raise EnvironmentProblem(f"--dataset {name} needs the datasets library", hint="pip install datasets (or, in a checkout: pip install -e '.[eval]')") from None
    if offline:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        if path is not None:
            return _local_rows(datasets, path, split)
        config = {"pope": "Full" if split != "test" else None, "gqa": "testdev_balanced_instructions",
                  "scienceqa-img": "ScienceQA-IMG"}.get(name)  # fmt: skip
        rows = datasets.load_dataset(benchmark.hub_id, config, split=split)
        if name == "gqa" and "image" not in rows.column_names:
            images = datasets.load_dataset(benchmark.hub_id, "testdev_balanced_images", split=split)
            by_id = {image_id: i for i, image_id in enumerate(images["id"])}
            rows = rows.add_column("image", [images[by_id[i]]["image"] for i in rows["imageId"]])
        return rows
    except (InputError, UsageError):
        raise
    except Exception as e:  # noqa: BLE001 - the datasets library raises many kinds; all mean "cannot load"
        where = path or benchmark.hub_id
        hint = "download it once with network access, or pass --dataset-path to a local copy" if offline else \
            "check the name, your network, or pass --dataset-path to a local copy"  # fmt: skip
        raise InputError(f"{where}: cannot load {name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                         hint=hint) from None  # fmt: skip


def _local_rows(datasets, path: str, split: str):
    from pathlib import Path

    folder = Path(path)
    if not folder.exists():
        raise InputError(f"{path}: no such file or folder")
    if (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InputError(f"{path}: has no split '{split}' (has {', '.join(loaded)})")
            return loaded[split]
        return loaded
    files = sorted(str(p) for p in (folder.rglob("*.parquet") if folder.is_dir() else [folder]) if str(p).endswith(".parquet"))
    if not files:
        raise InputError(f"{path}: neither a save_to_disk folder nor parquet files")
    matching = [f for f in files if split in Path(f).name] or files
    return datasets.load_dataset("parquet", data_files=matching, split="train")


def _image(rows, i: int, name: str, sample_id) -> DatasetImage:
    return DatasetImage(rows, i, "image", f"{name} sample {sample_id}")


def _pope_sample(rows, row: dict, i: int, name: str) -> EvalSample:
    return EvalSample(str(row["question_id"]), _image(rows, i, name, row["question_id"]), row["question"].strip() + SHORT_ANSWER,
                      [row["answer"].strip().lower()], row.get("category"))  # fmt: skip


def _mme_sample(rows, row: dict, i: int, name: str) -> EvalSample:
    question = row["question"].strip().replace(" Please answer yes or no.", "") + SHORT_ANSWER
    return EvalSample(f"{row['question_id']}#{i}", _image(rows, i, name, row["question_id"]), question, [row["answer"]],
                      row["category"], {"image_id": row["question_id"]})  # fmt: skip


def _gqa_sample(rows, row: dict, i: int, name: str) -> EvalSample:
    return EvalSample(str(row["id"]), _image(rows, i, name, row["id"]), row["question"] + SHORT_ANSWER, [row["answer"]])


def _scienceqa_sample(rows, row: dict, i: int, name: str) -> EvalSample:
    letters = [chr(ord("A") + k) for k in range(len(row["choices"]))]
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, row["choices"]))
    context = f"Context: {row['hint']}\n" if row.get("hint") else ""
    prompt = f"{context}{row['question']}\n{options}\nAnswer with the option's letter from the given choices directly."
    return EvalSample(str(i), _image(rows, i, name, i), prompt, [letters[row["answer"]]], row.get("subject"))


def _textvqa_sample(rows, row: dict, i: int, name: str) -> EvalSample:
    ocr = row.get("ocr_tokens") or []
    reference = f"\nReference OCR token: {', '.join(ocr)}" if ocr else ""
    prompt = f"{row['question'].capitalize()}{reference}{SHORT_ANSWER}"
    return EvalSample(str(row["question_id"]), _image(rows, i, name, row["question_id"]), prompt, list(row["answers"]))


def load_named(name: str, *, path: str | None, split: str | None, limit: int | None, seed: int, offline: bool) -> EvalSet:
    """`--dataset NAME`: the scenes testbed, easy-VQA or one of the paper suite."""
    benchmark = get_benchmark(name)
    if name == "scenes":
        if path is not None:
            raise UsageError("--dataset scenes is regenerated from seeds: it takes no --dataset-path")
        return load_scenes(limit=limit, seed=seed)
    if name == "easy-vqa":
        return load_easy_vqa(split or benchmark.default_split, limit=limit, seed=seed)
    return load_hub_benchmark(name, path=path, split=split, limit=limit, seed=seed, offline=offline)
