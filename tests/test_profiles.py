"""Trimming profiles: every shipped one validates; each kind of bad file gets its own error."""

from __future__ import annotations

import pytest

from tokentrim_cli.errors import ProfileError
from tokentrim_cli.methods import METHODS
from tokentrim_cli.profiles import available_profiles, check_fits, dump_profile, load_profile, parse_profile

GOOD = """schema_version = 1
name = "fastv-r75"
method = "fastv"
description = "test"

[params]
layer = 3
drop_ratio = 0.75
"""


def test_every_shipped_profile_validates():
    names = available_profiles()
    assert {"baseline", "vtw", "fastv"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.method in METHODS
        assert profile.sha256


def test_shipped_defaults_follow_the_papers():
    assert load_profile("vtw").params.to_dict() == {"layer": 16}
    assert load_profile("fastv").params.to_dict() == {"layer": 2, "drop_ratio": 0.5}
    assert load_profile("baseline").method == "none"


def test_round_trip_through_toml():
    profile = parse_profile(GOOD, source="x.toml")
    again = parse_profile(dump_profile(profile), source="y.toml")
    assert again.params == profile.params and again.name == profile.name and again.method == profile.method


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("drop_ratio", "drop_rate"), "bad.toml: [params] unknown key 'drop_rate' (did you mean 'drop_ratio'?)"),
        (GOOD.replace("description", "descripton"), "bad.toml: unknown key 'descripton' (did you mean 'description'?)"),
        (GOOD.replace("0.75", "1.5"), "bad.toml: [params] 'drop_ratio' must be in [0.0, 1.0), got 1.5"),
        (GOOD.replace("layer = 3", "layer = 0"), "bad.toml: [params] 'layer' must be in [1,"),
        (GOOD.replace("layer = 3", 'layer = "3"'), "bad.toml: [params] 'layer' must be int, got str '3'"),
        (GOOD.replace('"fastv"', '"fastvv"'), "bad.toml: unknown method 'fastvv' (did you mean 'fastv'?)"),
        (GOOD.replace("schema_version = 1", "schema_version = 2"), "bad.toml: schema_version 2 is not supported"),
        (GOOD.replace('name = "fastv-r75"\n', ""), "bad.toml: missing required key 'name'"),
        (GOOD.replace('description = "test"', 'position_policy = "loose"'), "bad.toml: position_policy must be one of"),
        (GOOD + "[applies_to]\nmodel = ['x']\n", "bad.toml: [applies_to]: unknown key 'model' (did you mean 'models'?)"),
        (GOOD.replace("= 0.75", "= "), "bad.toml: not valid TOML"),
        (GOOD.replace("[params]", "params = 3\n[other]"), "bad.toml: unknown key 'other'"),
        (GOOD.replace("[params]", "[params.inner]"), "bad.toml: [params] unknown key 'inner'"),
    ],
)
def test_bad_profiles_get_their_error(text, message):
    with pytest.raises(ProfileError) as info:
        parse_profile(text, source="bad.toml")
    assert str(info.value).startswith(message)
    assert info.value.exit_code == 3


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="unknown profile 'fastvv' \\(did you mean 'fastv'\\?\\); known: .*baseline"):
        load_profile("fastvv")


def test_missing_profile_file():
    with pytest.raises(ProfileError, match="profile file not found: nowhere/x.toml"):
        load_profile("nowhere/x.toml")


def test_profile_that_does_not_fit_the_model():
    with pytest.raises(ProfileError, match=r"'layer' must be in \[1, 4\] for this model, got 16") as info:
        check_fits(load_profile("vtw"), model_id="random:tiny", model_type="llava", num_layers=4)
    assert "llava-hf/llava-1.5-7b-hf" in info.value.hint


def test_profile_dir_env_and_local_dir(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text(GOOD)
    monkeypatch.setenv("TOKENTRIM_PROFILE_DIR", str(tmp_path))
    assert load_profile("mine").params.to_dict() == {"layer": 3, "drop_ratio": 0.75}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "fastv.toml").write_text(GOOD)  # ./profiles wins over the built-in one
    assert load_profile("fastv").params.drop_ratio == 0.75
