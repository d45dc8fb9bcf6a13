"""The ``dflare run`` flag layer: flags + TOML -> config, --json output, exit codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from host.campaign.command import add_arguments, config_from_args, execute
from host.errors import ConfigError
from host.report.summary import JSON_KEYS
from tests.campaign_support import model, noise_search, seeds


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def base_flags(out: Path) -> list[str]:
    return ["--original", str(model("digits28", "float32")), "--compressed", str(model("digits28", "int8")),
            "--seeds", str(seeds("digits28")), "--out", str(out), "--limit", "4", "--max-queries", "800",
            "--progress", "log"]


def test_flags_override_the_campaign_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('original = "o.tflite"\ncompressed = "c.tflite"\nseeds = "s.npz"\nmax_queries = 10\n'
                    'algo = "random"\nresize = true\nfail_on_deviation = true\n')
    cfg = config_from_args(parse(["--config", str(toml), "--max-queries", "20"]))
    assert (cfg.max_queries, cfg.algo, cfg.resize, cfg.fail_on_deviation) == (20, "random", True, True)
    assert cfg.original == tmp_path / "o.tflite"
    with pytest.raises(ConfigError, match="timeout_s"):
        config_from_args(parse(["--config", str(toml), "--timeout-s", "0"]))


def test_json_output_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert execute(parse([*base_flags(out), "--json"]), search=noise_search, argv=["dflare", "run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert tuple(printed) == JSON_KEYS and printed["out"] == str(out)
    assert printed == {k: json.loads((out / "summary.json").read_text())[k] for k in JSON_KEYS}
    assert printed["triggered"] > 0
    # Same directory again: resumes (nothing left to do) and, with --fail-on-deviation, gates on the result.
    code = execute(parse([*base_flags(out), "--fail-on-deviation"]), search=noise_search, argv=["dflare", "run"])
    text = capsys.readouterr().out
    assert code == 1
    assert "resumed: 4 seed(s)" in text and f"report: {out / 'report.html'}" in text
