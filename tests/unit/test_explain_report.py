"""dflare explain's figures in the campaign's report.html and summary.json, and the deny-list suggestion."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from host.campaign.config import CampaignConfig
from host.campaign.progress import LogProgress
from host.campaign.runner import CampaignRunner
from host.cli import main as dflare
from host.exit_codes import ExitCode
from host.explain.suggest import MAX_LAYERS, MIN_SHARE, suggest
from host.explain.tensors import TensorInfo
from host.report.explain_view import snr_chart
from tests.campaign_support import model, noise_search, seeds


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("explain_report")
    cfg = CampaignConfig(model("digits28", "float32"), model("digits28", "int8"), seeds("digits28"), out=out,
                         limit=4, max_queries=1000)
    assert CampaignRunner(cfg, search=noise_search, progress=LogProgress(io.StringIO())).run().triggered > 0
    assert "explain-ranking" not in (out / "report.html").read_text()  # nothing explained yet
    assert json.loads((out / "summary.json").read_text())["explain"] is None
    assert dflare(["explain", str(out)]) == ExitCode.ok
    return out, json.loads((out / "explain.json").read_text())


def test_summary_json_carries_the_explained_numbers(explained: tuple[Path, dict]) -> None:
    out, doc = explained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["explain"]["file"] == "explain.json" and summary["explain"]["inputs"] == len(doc["inputs"])
    assert summary["explain"]["ranking"] == doc["ranking"]
    for row in doc["ranking"]:  # carries: the inputs where the layer is the first jump or among the most grown
        assert max(row["first_jump"], row["most_grown"]) <= row["carries"] <= row["first_jump"] + row["most_grown"]
    assert summary["explain"]["suggestion"] == doc["suggestion"]
    entries = {e["input"]: e for e in doc["inputs"]}
    for item in summary["triggering_inputs"]:
        stem = item["png"].removeprefix("inputs/").removesuffix(".png")
        view = item["explain"]
        assert view["raw"]["first_jump"] == entries[stem]["first_jump"]
        assert [r["snr_db"] for r in view["raw"]["layers"]] == [r["trigger"]["snr_db"] for r in entries[stem]["layers"]]
        assert [r["seed_snr_db"] for r in view["raw"]["layers"]] == [r["seed"]["snr_db"]
                                                                     for r in entries[stem]["layers"]]
        assert (view["minimized"] is None) == (f"{stem}_min" not in entries)


def test_report_html_plots_each_input_and_ranks_the_layers(explained: tuple[Path, dict]) -> None:
    out, doc = explained
    html = (out / "report.html").read_text()
    assert 'id="explain-ranking"' in html and 'href="explain.html"' in html
    for entry in doc["inputs"]:
        assert f'href="explain.html#explain-{entry["input"]}"' in html
    for row in doc["ranking"]:
        assert row["layer"] in html
    assert "explain-suggestion" in html


def test_the_chart_marks_the_blamed_layer(explained: tuple[Path, dict]) -> None:
    _, doc = explained
    entry = next(e for e in doc["inputs"] if e["first_jump"])
    svg = snr_chart(entry)
    assert "first jump" in svg and "#fde2e1" in svg and "seed" in svg
    no_jump = {**entry, "first_jump": None}
    assert "#fde2e1" not in snr_chart(no_jump)


def test_an_explain_json_of_other_models_is_not_shown(explained: tuple[Path, dict], tmp_path: Path) -> None:
    out, doc = explained
    saved = (out / "explain.json").read_text()
    try:
        stale = json.loads(saved)
        stale["models"]["compressed"]["sha256"] = "0" * 64
        (out / "explain.json").write_text(json.dumps(stale))
        assert dflare(["report", str(out)]) == ExitCode.ok
        summary = json.loads((out / "summary.json").read_text())
        assert summary["explain"]["file"] is None and "another compressed model" in summary["explain"]["note"]
        assert all(item["explain"] is None for item in summary["triggering_inputs"])
        assert "explain.html#explain-" not in (out / "report.html").read_text()
    finally:
        (out / "explain.json").write_text(saved)
        assert dflare(["report", str(out)]) == ExitCode.ok


def _graph(ops: list[str]) -> list[TensorInfo]:
    return [TensorInfo(k, f"t{k};extra", (1, 4), "float32", op, k - 1, k) for k, op in enumerate(ops)]


def _row(match: int, op: str, carries: int, first_jump: int = 0) -> dict:
    return {"match": match, "layer": f"t{match}", "op": op, "first_jump": first_jump, "most_grown": carries,
            "carries": carries}


def test_the_suggestion_keeps_the_layers_that_carry_most_deviations_in_float() -> None:
    graph = _graph(["INPUT", "CONV_2D", "CONV_2D", "FULLY_CONNECTED", "SOFTMAX"])
    ranking = [_row(0, "INPUT", 12, 9), _row(4, "SOFTMAX", 8, 5), _row(1, "CONV_2D", 3, 3), _row(2, "CONV_2D", 11)]
    s = suggest(ranking, 12, graph, graph, "/c")
    assert 8 >= MIN_SHARE * 12 > 3
    assert [e["layer"] for e in s["layers"]] == ["t2", "t4"]  # most carried first; the input never; t1 under the share
    assert s["denylisted_nodes"] == ["t2;extra", "t4;extra"]  # the full tensor names, as the converter has them
    assert s["denylisted_ops"] == ["SOFTMAX"]  # CONV_2D: one of the two is suggested, so only the node form
    assert "denylisted_nodes=['t2;extra', 't4;extra']" in s["python"]
    assert "--keep-float 't2,t4'" in s["command"] and "--campaign /c" in s["command"]
    many = [_row(k, "CONV_2D", 4) for k in range(1, 5)]
    assert len(suggest(many, 4, graph, graph)["layers"]) == MAX_LAYERS


def test_no_suggestion_says_why() -> None:
    graph = _graph(["INPUT", "CONV_2D", "SOFTMAX"])
    s = suggest([_row(2, "SOFTMAX", 1, 1)], 10, graph, graph)
    assert s["denylisted_nodes"] == [] and s["python"] == "" and "t2, carries 1 of 10" in s["why"]
    assert "no layer carries" in suggest([], 10, graph, graph)["why"]
    assert suggest([], 0, graph, graph)["why"] == "no input explained"


def test_the_table_prints_the_suggestion(explained: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    out, doc = explained
    assert dflare(["explain", str(out)]) == ExitCode.ok
    printed = capsys.readouterr().out
    assert "keep in float" in printed
    if doc["suggestion"]["denylisted_nodes"]:
        assert "QuantizationDebugOptions(denylisted_nodes=" in printed and "dflare repair" in printed
