"""Every method's config and pure helpers, as a matrix over the registry plus hand-made tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tokentrim_cli.errors import ProfileError
from tokentrim_cli.methods import METHODS, get_method
from tokentrim_cli.methods.base import ParamError, keep_top, round_half_up
from tokentrim_cli.methods.fastv import FastVConfig, fastv_keep
from tokentrim_cli.methods.mustdrop import MustDropConfig
from tokentrim_cli.methods.st3 import ST3Config
from tokentrim_cli.methods.vtw import VTWConfig


@pytest.mark.parametrize("name", sorted(METHODS))
def test_config_round_trip_and_neutral(name):
    config_cls = METHODS[name].config_cls
    neutral = config_cls.neutral(32)
    assert config_cls.from_dict(neutral.to_dict()) == neutral
    neutral.check_model(32)


@pytest.mark.parametrize("name", sorted(m for m in METHODS if m != "none"))
def test_unknown_key_names_the_closest(name):
    config_cls = METHODS[name].config_cls
    field = dataclasses.fields(config_cls)[0].name
    typo = field[:-1]
    with pytest.raises(ParamError, match=f"unknown key '{typo}' \\(did you mean '{field}'\\?\\)"):
        config_cls.from_dict({typo: 3})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_neutral_fits_small_models(name):
    METHODS[name].config_cls.neutral(4).check_model(4)


def test_list_and_literal_params():
    assert MustDropConfig.from_dict({"filter_layers": [1, 3]}).filter_layers == (1, 3)
    with pytest.raises(ParamError, match="'filter_layers' must be a list of int, got"):
        MustDropConfig.from_dict({"filter_layers": [1, "3"]})
    with pytest.raises(ParamError, match="'decay' must be one of 'none', 'linear', 'cosine', 'exponential', got 'cubic'"):
        ST3Config.from_dict({"decay": "cubic"})
    with pytest.raises(ParamError, match="'filter_layers' must be ascending"):
        MustDropConfig(filter_layers=(6, 2))


def test_get_method_lists_known_methods():
    known = ", ".join(sorted(METHODS))  # computed: a new method needs no test edit
    with pytest.raises(ProfileError, match=f"unknown method 'fastvv'; known: {known}$"):
        get_method("fastvv")


def test_keep_top_breaks_ties_by_position():
    assert keep_top(torch.tensor([0.2, 0.5, 0.5, 0.1]), 2).tolist() == [1, 2]
    assert keep_top(torch.tensor([0.3, 0.3, 0.3]), 2).tolist() == [0, 1]


def test_round_half_up():
    assert [round_half_up(x) for x in (2.5, 3.5, 0.49, 288.0)] == [3, 4, 0, 288]


def test_fastv_keep_on_hand_made_scores():
    # tokens: text, v, v, v, v, text ; attention from the last token
    attention = torch.tensor([0.5, 0.1, 0.3, 0.05, 0.3, 0.2])
    is_visual = torch.tensor([False, True, True, True, True, False])
    valid = torch.ones(6, dtype=torch.bool)
    # R = 0.5 keeps 2 of 4 visual tokens: the 0.3 pair (positions 2 and 4)
    assert fastv_keep(attention, is_visual, valid, 0.5).tolist() == [0, 2, 4, 5]
    # R = 0.6 keeps round(1.6) = 2; R = 0.9 keeps round(0.4) = 0
    assert fastv_keep(attention, is_visual, valid, 0.9).tolist() == [0, 5]
    # padding (valid=False) goes; text is never dropped
    assert fastv_keep(attention, is_visual, torch.tensor([False] + [True] * 5), 0.0).tolist() == [1, 2, 3, 4, 5]


def test_config_ranges():
    with pytest.raises(ParamError, match=r"'drop_ratio' must be in \[0.0, 1.0\), got 1.0"):
        FastVConfig(drop_ratio=1.0)
    with pytest.raises(ParamError, match="'layer' must be in \\[1, 31\\] for this model, got 32"):
        FastVConfig(layer=32).check_model(32)
    with pytest.raises(ParamError, match="'layer' must be in \\[1, 32\\] for this model, got 33"):
        VTWConfig(layer=33).check_model(32)
    VTWConfig(layer=32).check_model(32)
