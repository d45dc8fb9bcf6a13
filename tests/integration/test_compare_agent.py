"""dflare compare across a real agent on loopback and the in-process interpreter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from host.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
INT8 = FIXTURES / "models" / "digits28-int8.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"


def test_compare_remote_and_local_columns(tmp_path, agent, capsys):
    with np.load(SEEDS) as data:
        np.savez(tmp_path / "seeds.npz", x=data["x"][:24])
    code = main(["compare", "--model", str(INT8), "--seeds", str(tmp_path / "seeds.npz"),
                 "--targets", f"{agent.uri},delegate=xnnpack,name=agent-xnnpack", "local:,delegate=xnnpack",
                 f"{agent.uri},delegate=ref,threads=1", "--token-file", str(agent.token_file),
                 "--batch-size", "8", "--runs", "6", "--out", str(tmp_path / "out"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    labels = summary["matrix"]["labels"]
    assert labels == ["agent-xnnpack", "local:/xnnpack", f"{agent.uri}/ref/t1"]
    pairs = {(p["a"], p["b"]): p for p in summary["pairs"]}
    same = pairs[("agent-xnnpack", "local:/xnnpack")]
    # The agent runs the same runtime code: bit-identical outputs to the in-process interpreter.
    assert same["disagreements"] == 0 and same["max_abs_diff"] == 0.0
    columns = {c["label"]: c for c in summary["columns"]}
    remote = columns["agent-xnnpack"]
    assert remote["error"] == "" and remote["latency_ms"]["source"] == "invoke"
    assert remote["latency_ms"]["runs"] == 6 and remote["latency_ms"]["batch_size"] == 8
    # The host's wall clock includes the RPC, so it cannot be below the agent's invoke() time.
    assert remote["host_latency_ms"]["mean_ms"] >= remote["latency_ms"]["mean_ms"]
    assert remote["target_info"]["agent_version"]


def test_compare_reports_an_unreachable_agent_as_a_failed_column(tmp_path, capsys):
    with np.load(SEEDS) as data:
        np.savez(tmp_path / "seeds.npz", x=data["x"][:4])
    code = main(["compare", "--model", str(INT8), "--seeds", str(tmp_path / "seeds.npz"),
                 "--targets", "grpc://127.0.0.1:1,delegate=cpu", "local:,delegate=xnnpack", "local:,delegate=ref",
                 "grpc://127.0.0.1:1,delegate=xnnpack", "--connect-timeout-s", "0.5",
                 "--runs", "1", "--out", str(tmp_path / "out"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    failed = [summary["columns"][0], summary["columns"][3]]
    assert failed[0]["error"] and "127.0.0.1:1" in failed[0]["error"]
    assert failed[1]["error"] == failed[0]["error"]  # the dead target is not dialled twice
    assert [(p["a"], p["b"]) for p in summary["pairs"]] == [("local:/xnnpack", "local:/ref")]
