"""The default model (issue 14): assembled from the carrier packages and the weights trained here,
it loads through the ordinary loader and answers questions about scenes it never saw in training,
in one word or in English sentences, across turns. The README's Python example runs as written.

Skipped without the carrier packages (CI installs them: README quick start). The model is assembled
once per session into a temporary cache, never into the user's."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from benchmark_scripts import benchmark_module
from PIL import Image

from tokentrim_cli import assembly, scenes

carriers_installed = all(__import__("importlib").util.find_spec(c.module) for c in assembly.CARRIERS)
pytestmark = pytest.mark.skipif(not carriers_installed, reason=f"needs the carrier packages ({assembly.INSTALL_COMMAND})")

SAMPLE = resources.files("tokentrim_cli") / "samples" / "scene.png"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("model-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("TOKENTRIM_CACHE_DIR", str(cache))
    assembly.ensure_assembled()
    yield cache
    patch.undo()


@pytest.fixture(scope="session")
def scenes_model(model_cache):
    from tokentrim_cli.model import load_llava

    return load_llava("builtin:scenes", device="cpu")


@pytest.fixture(autouse=True)
def same_cache(request, monkeypatch):
    """Every test here sees the session's cache (the autouse isolation resets the environment)."""
    if "model_cache" in request.fixturenames or "scenes_model" in request.fixturenames:
        monkeypatch.setenv("TOKENTRIM_CACHE_DIR", str(request.getfixturevalue("model_cache")))


def sample_objects():
    """The sample picture's objects, from the generator's object list (not from the model)."""
    return scenes.scene(scenes.SAMPLE_SEED)[1]


def test_the_sample_picture_is_the_generators():
    shipped = Image.open(SAMPLE).convert("RGB")
    assert shipped.tobytes() == scenes.picture(scenes.SAMPLE_SEED).convert("RGB").tobytes()


def test_it_loads_like_any_checkpoint(scenes_model, model_cache):
    info = scenes_model.info
    assert info.model_type == "llava" and info.num_layers == assembly.TEXT_LAYERS
    folder = next((model_cache / "models").iterdir())
    assert (folder / "config.json").is_file() and assembly.is_intact(folder)
    assert (folder / "README.md").is_file()  # the model card travels with the checkpoint
    from transformers import LlavaForConditionalGeneration

    assert isinstance(scenes_model.model, LlavaForConditionalGeneration)


def _answers(loaded, prompts, *, profile="baseline", max_new_tokens=8):
    from tokentrim_cli.generation import answer_batch
    from tokentrim_cli.inputs import LoadedImage
    from tokentrim_cli.profiles import load_profile

    image = LoadedImage("scene.png", scenes.picture(scenes.SAMPLE_SEED))
    return answer_batch(loaded, load_profile(profile), [([image], p) for p in prompts], max_new_tokens=max_new_tokens)


def test_it_answers_short_questions_about_the_sample_scene(scenes_model):
    """Questions of every kind the model was taught, answers recomputed from the object list. The
    shipped model (the mean of runs 54-61's weights) answers 7 of the 8, the spatial one included:
    it calls the green hexagon cyan, with purple and green close behind (the weights before it, the
    mean of run50's and run52's, did the same; run49's answered all 8). Its seven right answers lead
    the runner-up by 1.4 logits or more in fp32 (the red objects' count, 1 against 2), far beyond
    what another CPU's arithmetic moves, so the bar of 7 holds. Chance is below 3 of 8, so a model
    that does not read the picture fails."""
    objects = sample_objects()
    by_shape = {o.shape: o for o in objects}
    cross, hexagon = by_shape["cross"], by_shape["hexagon"]
    questions = {
        "What color is the star?": by_shape["star"].color,
        "What color is the hexagon?": hexagon.color,
        "What shape is the red object?": next(o.shape for o in objects if o.color == "red"),
        "How many stars are there?": str(sum(o.shape == "star" for o in objects)),
        "How many red objects are there?": str(sum(o.color == "red" for o in objects)),
        "Is there a purple star?": "yes" if any(o.color == "purple" and o.shape == "star" for o in objects) else "no",
        "Is there a blue triangle?": "yes" if any(o.color == "blue" and o.shape == "triangle" for o in objects) else "no",
        "Is the cross to the left of the hexagon?": "yes" if scenes.relation_holds(cross, hexagon, "left") else "no",
    }
    prompts = [q + scenes.SHORT_ANSWER_SUFFIX for q in questions]
    texts, _ = _answers(scenes_model, prompts)
    got = {q: scenes.normalize_short(t) for q, t in zip(questions, texts)}
    wrong = {q: (got[q], a) for q, a in questions.items() if got[q] != scenes.normalize_short(a)}
    assert len(wrong) <= 1, wrong


def test_it_describes_the_picture_in_sentences(scenes_model):
    """The shipped model (the mean of runs 54-61's weights) names 4 of the sample's 5 objects (recall
    0.8) in 6 phrases (precision 0.67: the cyan circle twice, the hexagon as a circle; the weights
    before it, and run49's and run43's, named the yellow square twice instead). A model that does
    not read the picture names colour-shape pairs of its 48 at random: recall and precision near 0."""
    texts, _ = _answers(scenes_model, [scenes.DESCRIBE_PROMPT], max_new_tokens=80)
    recall, precision = scenes.describe_scores(texts[0], sample_objects())
    assert re.match(r"^[A-Z].*\.$", texts[0].strip()), texts[0]  # an English sentence, not a word
    assert recall >= 0.6 and precision >= 0.5, texts[0]


def test_a_second_turn_reads_the_same_picture(scenes_model):
    from tokentrim_cli.conversation import Conversation
    from tokentrim_cli.generation import GenerationSettings
    from tokentrim_cli.profiles import load_profile

    conversation = Conversation(scenes_model, load_profile("baseline"), settings=GenerationSettings(max_new_tokens=24))
    conversation.add_image(str(SAMPLE))  # as /image does
    first = conversation.ask("What color is the star?")
    second = conversation.ask("What color is the cross?")
    star = next(o.color for o in sample_objects() if o.shape == "star")
    cross = next(o.color for o in sample_objects() if o.shape == "cross")
    assert star in first.text.lower() and cross in second.text.lower(), (first.text, second.text)
    assert second.text.strip().endswith(".")


def test_the_readme_python_example_runs(model_cache, tmp_path):
    """The README's first Python block, run as written from the checkout's root."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(block)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "TOKENTRIM_CACHE_DIR": str(model_cache)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) >= 3


def test_the_quick_start_chat(model_cache):
    """The README's first command, after its installs: the default model on the shipped scene."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"&& (tokentrim chat -i tokentrim_cli/samples/scene\.png [^\n]*)", readme).group(1)
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "TOKENTRIM_CACHE_DIR": str(model_cache)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    recall, _ = scenes.describe_scores(done.stdout, sample_objects())
    assert recall >= 0.6, done.stdout
    assert "synthetic scenes" in done.stderr  # the note on what it was trained on


def test_memory_estimate_reads_a_dinov2_tower(scenes_model):
    """`tokentrim profile` sizes batches from the configs; DINOv2 states an MLP ratio, not a width."""
    from tokentrim_cli import metrics
    from tokentrim_cli.generation import prepare_batch
    from tokentrim_cli.inputs import LoadedImage

    image = LoadedImage("scene.png", scenes.picture(scenes.SAMPLE_SEED))
    inputs = prepare_batch(scenes_model, [([image], "What color is the star?")])
    one = metrics.generation_bytes(scenes_model, inputs, max_new_tokens=16)
    longer = metrics.generation_bytes(scenes_model, inputs, max_new_tokens=1016)
    assert 0 < one < longer  # the KV cache of 1,000 more tokens is counted


def test_the_spatial_probe_reads_the_named_objects_tokens(scenes_model):
    """benchmarks/spatial_diagnosis.py --probe: the token positions it reads are the last tokens of
    the two objects' names and of the prompt, in the very inputs eval gives the model: the states it
    keeps after the embeddings are those tokens' input embeddings."""
    import torch

    diagnosis = benchmark_module("spatial_diagnosis")
    from tokentrim_cli.generation import prepare_inputs
    from tokentrim_cli.inputs import LoadedImage

    samples = [s for s in scenes.evaluation_questions() if s.question.type == "spatial"][:2]
    items = [(*scenes.scene(s.seed), s.question) for s in samples]
    states = diagnosis.decoder_states(scenes_model, items, lambda message: None)
    layers = len(scenes_model.model.model.language_model.layers)
    assert states.shape == (2, layers + 1, 3, scenes_model.model.config.text_config.hidden_size)
    embed = scenes_model.model.get_input_embeddings()
    tokenizer = scenes_model.processor.tokenizer
    for (picture, objects, question), row in zip(items, states):
        first, second = re.fullmatch(r"Is the (.+?) (?:to the left of|to the right of|above|below) the (.+)\?", question.text).groups()
        ids = prepare_inputs(scenes_model, [LoadedImage("scene", picture)], question.prompt)["input_ids"][0]
        text = tokenizer.decode(ids)
        where = diagnosis.token_positions(tokenizer, text[text.rindex("<|im_start|>user"):], (first, second))
        assert tokenizer.decode(ids[: len(ids) + where["first"] + 1]).endswith(f"Is the {first}")
        assert tokenizer.decode(ids[: len(ids) + where["second"] + 1]).endswith(f"the {second}")
        assert tokenizer.decode(ids[-1:]) == "\n"  # the assistant header's end: where the answer starts
        for slot, at in enumerate((where["first"], where["second"], -1)):
            assert torch.equal(row[0, slot], embed(ids[at : at + 1 if at != -1 else None])[0].float())


def test_the_count_probe_reads_the_counted_words_token(scenes_model):
    """benchmarks/count_diagnosis.py: the tokens it reads are the last token of what is counted
    ("stars", "red objects") and the prompt's last, in the very inputs eval gives the model: the
    states it keeps after the embeddings are those tokens' input embeddings."""
    import torch

    diagnosis = benchmark_module("count_diagnosis")
    from tokentrim_cli.generation import prepare_inputs
    from tokentrim_cli.inputs import LoadedImage

    samples = scenes.evaluation_questions()
    chosen = [next(s for s in samples if s.question.type == kind) for kind in ("count_color", "count_shape")]
    items = [(scenes.picture(s.seed), s.question) for s in chosen]
    states = diagnosis.decoder_states(scenes_model, items, lambda message: None)
    layers = len(scenes_model.model.model.language_model.layers)
    assert states.shape == (2, layers + 1, 2, scenes_model.model.config.text_config.hidden_size)
    embed = scenes_model.model.get_input_embeddings()
    tokenizer = scenes_model.processor.tokenizer
    for (picture, question), row in zip(items, states):
        phrase = re.fullmatch(r"How many (\w+(?: objects)?) are there\?", question.text).group(1)
        ids = prepare_inputs(scenes_model, [LoadedImage("scene", picture)], question.prompt)["input_ids"][0]
        text = tokenizer.decode(ids)
        at = diagnosis.counted_position(tokenizer, text[text.rindex("<|im_start|>user"):], phrase)
        assert tokenizer.decode(ids[: len(ids) + at + 1]).endswith(f"How many {phrase}")
        assert not tokenizer.decode(ids[: len(ids) + at]).endswith(f"How many {phrase}")
        assert tokenizer.decode(ids[-1:]) == "\n"  # the assistant header's end: where the answer starts
        assert torch.equal(row[0, 0], embed(ids[at : at + 1])[0].float())
        assert torch.equal(row[0, 1], embed(ids[-1:])[0].float())


def test_the_count_attention_share_counts_the_counted_objects_patches(scenes_model):
    """benchmarks/count_diagnosis.py --attention on a made-up attention: in layer 1 every query
    attends only to the counted objects' patches (share 1, none to their kin); in layer 2 the
    counted phrase's last token and the prompt's last attend evenly to every patch (each group's
    share: its part of the object patches) and every other query only to the background. The
    patches an object covers are recomputed here from the geometry (centre within 0.75 of the
    radius, and the patch under the centre), the kin (uncounted, sharing the attribute not asked
    with a counted object) from the objects, and the query rows from the decoded tokens."""
    import math
    import types

    import torch

    diagnosis = benchmark_module("count_diagnosis")
    tokenizer = scenes_model.processor.tokenizer
    image_token = scenes_model.model.config.image_token_id
    samples = scenes.evaluation_questions()
    chosen = diagnosis.attention_questions(samples, "count_shape", 2) + diagnosis.attention_questions(samples, "count_color", 1)
    items = [(*scenes.scene(seed), question) for seed, question in chosen]
    expected_blind = []

    def covered(objects, counted):
        cells = set()
        for o in objects:
            if counted(o):
                cells |= {(r, c) for r in range(24) for c in range(24) if math.hypot(c * 14 + 7 - o.x, r * 14 + 7 - o.y) < 0.75 * o.radius}
                cells.add((min(23, int(o.y // 14)), min(23, int(o.x // 14))))
        return cells

    class Attending:  # what prepare_batch and counted_attention use of a model
        config, device, dtype = scenes_model.model.config, torch.device("cpu"), torch.float32

        def __call__(self, input_ids, output_attentions=False, **ignored):
            batch, length = input_ids.shape
            layers = torch.zeros(2, batch, 3, length, length)
            for n, (_, objects, question) in enumerate(items_now):
                phrase = question.text.removeprefix("How many ").removesuffix(" are there?")
                shape = next((s for s, plural in scenes.PLURALS.items() if plural == phrase), None)
                wanted = (lambda o: o.shape == shape) if shape else (lambda o: o.color == phrase.split()[0])
                other = {o.color if shape else o.shape for o in objects if wanted(o)}
                kin = (lambda o: not wanted(o) and o.color in other) if shape else (lambda o: not wanted(o) and o.shape in other)
                counted_cells, object_cells = covered(objects, wanted), covered(objects, lambda o: True)
                kin_cells = covered(objects, kin)
                visual = (input_ids[n] == image_token).nonzero().squeeze(1).tolist()
                cell = {(i // 24, i % 24): at for i, at in enumerate(visual)}
                ids = input_ids[n].tolist()
                query = next(i for i in range(length) if tokenizer.decode(ids[: i + 1]).endswith(f"How many {phrase}"))
                for at in (cell[c] for c in counted_cells):
                    layers[0, n, :, :, at] = 1 / len(counted_cells)
                background = [cell[c] for c in cell if c not in object_cells]
                layers[1, n, :, :, background] = 1 / len(background)
                for row in (query, length - 1):
                    layers[1, n, :, row, :] = 0
                    layers[1, n, :, row, visual] = 1 / len(visual)
                expected_blind.append([len(counted_cells) / len(object_cells), len(kin_cells) / len(object_cells)])
            return types.SimpleNamespace(attentions=tuple(layers))

    fake = types.SimpleNamespace(model=Attending(), processor=scenes_model.processor)
    items_now = items[:2]
    shares, blind = diagnosis.counted_attention(fake, items_now, lambda message: None, batch_size=2)
    items_now = items[2:]
    more = diagnosis.counted_attention(fake, items_now, lambda message: None, batch_size=1)
    shares, blind = torch.cat([shares, more[0]]), torch.cat([blind, more[1]])
    assert shares.shape == (3, 2, 3, 2, 2)
    assert torch.allclose(shares[:, 0, :, :, 0], torch.ones(3, 3, 2)) and not shares[:, 0, :, :, 1].any()
    assert [pytest.approx(row) for row in blind.tolist()] == expected_blind
    assert all(0 < counted < 1 for counted, _ in expected_blind) and any(kin > 0 for _, kin in expected_blind)
    assert torch.allclose(shares[:, 1], blind[:, None, None, :].expand(3, 3, 2, 2))
