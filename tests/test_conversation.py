"""Multi-turn chat: each turn is the whole conversation, trimmed afresh; images join mid-chat."""

from __future__ import annotations

import json

import pytest
import torch
from images import good_png

from tokentrim_cli.conversation import Conversation
from tokentrim_cli.errors import InputError, UsageError
from tokentrim_cli.generation import GenerationSettings, generate_messages
from tokentrim_cli.inputs import load_image
from tokentrim_cli.model import LoadInfo, Loaded
from tokentrim_cli.profiles import parse_profile

PROFILES = {
    "baseline": 'schema_version = 1\nname = "baseline"\nmethod = "none"\n',
    "vtw": 'schema_version = 1\nname = "vtw"\nmethod = "vtw"\n[params]\nlayer = 2\n',
    "fastv": 'schema_version = 1\nname = "fastv"\nmethod = "fastv"\n',
    "st3": 'schema_version = 1\nname = "st3"\nmethod = "st3"\n[params]\nstart_layer = 1\nstride = 1\nhorizon = 4\nevict_interval = 2\n',
    "mustdrop": 'schema_version = 1\nname = "m"\nmethod = "mustdrop"\n[params]\nfilter_layers = [1]\nglobal_threshold = 0.2\nindividual_threshold = 0.5\n',
}


def profile(name):
    return parse_profile(PROFILES[name], source=f"{name}.toml")


@pytest.fixture
def loaded(tiny):
    model, processor = tiny
    return Loaded(model, processor, LoadInfo("random:tiny", "random", "llava", "cpu", "float32", "none", "sdpa", 4, 0.0))


@pytest.fixture
def pictures(tmp_path):
    return [str(good_png(tmp_path / "red.png")), str(good_png(tmp_path / "blue.png", (50, 20), (10, 10, 200)))]


SETTINGS = GenerationSettings(max_new_tokens=6)


def two_turns(conversation, pictures):
    conversation.add_image(pictures[0])
    conversation.ask("What colour is it?")
    conversation.add_image(pictures[1])  # an image added mid-conversation
    return conversation.ask("And this one?")


def test_baseline_turn_two_is_what_stock_transformers_answers(loaded, pictures):
    conversation = Conversation(loaded, profile("baseline"), settings=SETTINGS)
    second = two_turns(conversation, pictures)
    model, processor = loaded.model, loaded.processor
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": conversation.turns[0].answer}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [load_image(p).image for p in pictures]
    inputs = processor(images=images, text=[text], return_tensors="pt")
    with torch.no_grad():
        stock = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = processor.tokenizer.decode(stock[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert second.text == expected
    assert second.visual_tokens.before_trimming == 32  # both images are in the second prompt


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_later_turns_reuse_the_conversation_with_every_profile(loaded, pictures, name):
    conversation = Conversation(loaded, profile(name), settings=SETTINGS)
    second = two_turns(conversation, pictures)
    assert [t.images for t in conversation.turns] == [[pictures[0]], [pictures[1]]]
    # The second turn is one prefill over the whole conversation: the same as asking it in one go.
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": conversation.turns[0].answer}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
    ]
    again = generate_messages(loaded, profile(name), messages=messages, images=conversation.images, settings=SETTINGS)
    assert again.text == second.text
    # Earlier images are trimmed again in later turns: both images' tokens enter every prefill.
    assert second.visual_tokens.before_trimming == 32
    if name == "fastv":
        assert second.visual_tokens.per_layer == [32, 32, 16, 16]


def test_profile_switch_and_clear(loaded, pictures):
    conversation = Conversation(loaded, profile("baseline"), settings=SETTINGS)
    conversation.add_image(pictures[0])
    conversation.ask("Hi")
    conversation.profile = profile("fastv")
    result = conversation.ask("Again")
    assert result.visual_tokens.per_layer == [16, 16, 8, 8]
    conversation.clear()
    assert conversation.turns == [] and conversation.images == [] and conversation.last is None


def test_stop_request_ends_the_answer_and_keeps_the_turn(loaded):
    conversation = Conversation(loaded, profile("baseline"), settings=GenerationSettings(max_new_tokens=50))
    polls = []
    result = conversation.ask("Talk", should_stop=lambda: polls.append(1) or len(polls) >= 3)
    assert result.finish_reason == "interrupted" and result.new_tokens == 3
    assert conversation.turns[-1].finish_reason == "interrupted"


def test_settings_and_bad_images(loaded, tmp_path):
    conversation = Conversation(loaded, profile("baseline"))
    conversation.set("temperature", "0.7")
    conversation.set("max_new_tokens", "12")
    assert conversation.settings.temperature == 0.7 and conversation.settings.max_new_tokens == 12
    with pytest.raises(UsageError, match="unknown setting 'temp'; settable: max_new_tokens, temperature, top_p, seed"):
        conversation.set("temp", "1")
    with pytest.raises(UsageError, match="max_new_tokens takes a int, got 'many'"):
        conversation.set("max_new_tokens", "many")
    with pytest.raises(InputError, match="no such file"):
        conversation.add_image(str(tmp_path / "missing.png"))
    assert conversation.pending_images == []


def test_save_is_atomic_json(loaded, pictures, tmp_path):
    conversation = Conversation(loaded, profile("fastv"), settings=SETTINGS)
    two_turns(conversation, pictures)
    path = conversation.save(tmp_path / "chats" / "one.json")
    saved = json.loads(path.read_text())
    assert saved["profile"]["name"] == "fastv" and saved["settings"]["max_new_tokens"] == 6
    assert [turn["prompt"] for turn in saved["history"]] == ["What colour is it?", "And this one?"]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="cannot write"):
        conversation.save(blocker / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blue.png", "chats", "file", "red.png"]
    assert [p.name for p in (tmp_path / "chats").iterdir()] == ["one.json"]  # no temporary file left


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from tokentrim_cli.files import write_text_atomic

    umask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "profile.toml", "x = 1\n")
    finally:
        os.umask(umask)
    assert path.read_text() == "x = 1\n" and (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["profile.toml"]  # no temporary left behind
