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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_errors_a_person_can_act_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from host.cli import main as dflare

    def run(*changes: str) -> tuple[int, str]:
        flags = base_flags(tmp_path / "out")
        for i in range(0, len(changes), 2):
            if changes[i] in flags:
                flags[flags.index(changes[i]) + 1] = changes[i + 1]
            else:
                flags += [changes[i], changes[i + 1]]
        code = dflare(["run", *flags])
        return code, capsys.readouterr().err

    not_tflite = tmp_path / "bad.tflite"
    not_tflite.write_bytes(b"\x00" * 32)
    bad_seeds = tmp_path / "bad.npz"
    import numpy as np

    np.savez(bad_seeds, x=np.zeros((2, 28, 28, 1), np.float32))
    cases = [
        (("--original", str(tmp_path / "missing.tflite")), 2, "model file not found"),
        (("--compressed", str(not_tflite)), 2, "is not a TFLite model"),
        (("--compressed", str(model("digits32rgb", "int8"))), 2, "input shape mismatch"),
        (("--seeds", str(bad_seeds)), 2, "x has dtype float32, expected uint8"),
        (("--max-queries", "-3"), 2, "campaign setting max_queries"),
    ]
    for change, code, message in cases:
        got, err = run(*change)
        assert (got, message in err) == (code, True), (change, err)
    uri = f"grpc://127.0.0.1:{_free_port()}"
    code, err = run("--target", uri, "--connect-timeout-s", "1")
    assert code == 3 and uri in err and "nothing listens" in err  # refused: at once, not after the timeout


def test_list_flags_take_spaces_or_commas_as_tflites_tools_do(tmp_path: Path) -> None:
    common = ["--original", "o.tflite", "--compressed", "c.tflite", "--seeds", "s.npz"]
    spaced = config_from_args(parse([*common, "--mean", "127.5", "127.5", "127.5", "--std", "58", "57", "57.5"]))
    commas = config_from_args(parse([*common, "--mean", "127.5,127.5,127.5", "--std", "58,57", "57.5"]))
    assert spaced.mean == commas.mean == (127.5, 127.5, 127.5)
    assert spaced.std == commas.std == (58.0, 57.0, 57.5)
    with pytest.raises(ConfigError, match="campaign setting mean"):
        config_from_args(parse([*common, "--mean", "1,x"]))


def test_every_setting_has_one_flag_and_the_identity_is_unchanged() -> None:
    from host.campaign.config import NON_IDENTITY_FIELDS, setting_fields

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in setting_fields()} <= flags
    # Stores written by earlier versions resume only while the identity keeps its fields: a new setting is
    # added here (credentials, output, host-side knobs) or to LATER_FIELD_DEFAULTS, never silently.
    expected = {"original", "compressed", "seeds", "out", "token_file", "fail_on_deviation", "connect_timeout_s",
                "minimize", "minimize_max_queries", "mutation_threads", "tls_ca_file", "tls_server_name"}
    assert expected == NON_IDENTITY_FIELDS
