"""`tokentrim profile`: a short end-to-end run whose JSON has every field, and its bad inputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokentrim_cli import metrics
from tokentrim_cli.cli import app

runner = CliRunner()
ARGS = ["profile", "-m", "random:tiny", "--runs", "2", "--warmup", "1", "--max-new-tokens", "4"]


def test_profile_json_has_every_field_and_kv_bytes_agree(tmp_path):
    plot = tmp_path / "speed.png"
    result = runner.invoke(app, [*ARGS, "--profile", "fastv", "--compare", "baseline", "--batch-size", "2",
                                 "--json", "--plot", str(plot)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["reference"] == "baseline" and document["settings"]["batch_size"] == 2
    assert [row["name"] for row in document["rows"]] == ["stock", "baseline", "fastv"]
    for key in ("device_name", "torch", "transformers", "model"):
        assert key in document["provenance"]
    assert document["provenance"]["cpu_capability"]  # "AVX2", "AVX512", ...: torch's CPU kernels
    assert document["provenance"]["model"]["attn_impl"] == "sdpa" and "FastV convention" in document["flops_formula"]
    rows = {row["name"]: row for row in document["rows"]}
    for row in rows.values():
        for key in ("ttft_s", "decode_tokens_per_s", "end_to_end_s"):
            assert len(row[key]) == 2  # raw samples, one per measured run
        for key in ("ttft_stats_s", "speedup_vs_reference", "flops_implied_speedup", "prefill_flops",
                    "kv_bytes_after_prefill", "kv_bytes_end", "visual_input", "visual_layer_averaged"):  # fmt: skip
            assert key in row
        assert row["kv_bytes_end"] == row["kv_bytes_end_formula"]  # measured tensors == formula from the trace
    assert rows["baseline"]["profile_sha256"] and rows["stock"]["profile_sha256"] is None
    assert rows["fastv"]["visual_input"] == 16 and rows["fastv"]["visual_layer_averaged"] == 12.0
    assert rows["fastv"]["kv_entries_end"][2] == rows["baseline"]["kv_entries_end"][2] - 8
    assert rows["fastv"]["flops_implied_speedup"] > 1.0 and rows["baseline"]["flops_implied_speedup"] == 1.0
    assert set(rows["fastv"]["overhead_s"]) == {"scoring", "gathering"} and rows["fastv"]["overhead_s"]["scoring"] > 0
    assert rows["stock"]["prefill_flops"] == rows["baseline"]["prefill_flops"]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_profile_table(tmp_path):
    profile = tmp_path / "vtw-tiny.toml"
    profile.write_text('schema_version = 1\nname = "vtw-tiny"\nmethod = "vtw"\n[params]\nlayer = 2\n')
    result = runner.invoke(app, [*ARGS, "--profile", str(profile)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.stderr
    flat = " ".join(result.stdout.split())  # the caption wraps at the table's width
    assert "speed-up: measured TTFT vs baseline" in flat and "vtw-tiny" in flat and "16->16 (8.0)" in flat
    assert str(profile) not in result.stdout  # rows carry the profile's name, not its path
    assert "CPU run: peak memory is the process's" in result.stderr


def test_unknown_profile_and_zero_runs():
    result = runner.invoke(app, [*ARGS, "--profile", "fastvv"])
    assert result.exit_code == 3 and "unknown profile 'fastvv'" in result.stderr
    assert runner.invoke(app, ["profile", "-m", "random:tiny", "--profile", "fastv", "--runs", "0"]).exit_code == 2


def test_batch_that_does_not_fit_exits_5_with_the_largest_that_fits(monkeypatch):
    class OutOfMemoryError(RuntimeError):
        pass

    def measure(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory")

    def probe(loaded, inputs, *, below, max_new_tokens):
        assert below == 8
        return 2

    monkeypatch.setattr(metrics, "measure", measure)
    monkeypatch.setattr(metrics, "largest_fitting_batch", probe)
    result = runner.invoke(app, [*ARGS, "--profile", "fastv", "--batch-size", "8"])
    assert result.exit_code == 5
    assert "--batch-size 8 does not fit in cpu memory" in result.stderr
    assert "the largest batch that fits a 4-token answer with stock transformers: 2" in result.stderr


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0]])
def test_speedup_statistics_are_run_by_run(values):
    report = metrics.Report(
        rows=[metrics.Measurement("a", None, ttft_s=values), metrics.Measurement("b", None, ttft_s=[v / 2 for v in values])],
        reference="a", settings={}, provenance={}, process_peak_rss_bytes=0,
    )  # fmt: skip
    assert report.speedup("b").median == 2.0 and report.speedup("b").p10 == 2.0
