"""``dflare explain --device``: the compressed side measured on the campaign's agent (GetTensors).

A real ``dflare run`` process runs a small campaign with the compressed model on a loopback agent.
``dflare explain --device`` then reads every compressed tensor through the agent, on its xnnpack
kernels. On this machine those are the host's kernels too, so the per-layer figures must equal the
in-process explain's exactly; the output must say where the compressed side was measured. Once the
agent is gone, ``--device`` falls back to this process and says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from host.cli import main
from tests.agent_support import ROOT, start_agent
from tests.campaign_support import model, seeds

RUN_TIMEOUT_S = 300  # a generous ceiling on 2 shared cores; the campaign takes seconds


def _explain(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["explain", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_explain_device_measures_the_compressed_side_on_the_agent(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    with start_agent(tmp_path / "agent") as agent:
        argv = ["run", "--original", str(model("digits28", "float32")), "--compressed", str(model("digits28", "int8")),
                "--seeds", str(seeds("digits28")), "--limit", "3", "--max-queries", "2000", "--out", str(out),
                "--progress", "log", "--target", agent.uri, "--token-file", str(agent.token_file)]
        proc = subprocess.run([sys.executable, "-m", "host.cli", *argv], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-2000:]

        local = _explain(capsys, str(out))
        device = _explain(capsys, str(out), "--device", "--token-file", str(agent.token_file))

    assert device["inputs"], "the campaign found no triggering input to explain"
    compressed = device["models"]["compressed"]
    assert compressed["measured_on"] == agent.uri and compressed["kernels"] == "xnnpack"
    assert compressed["hidden"] == [] and compressed["device"]["outputs_identical"]
    assert compressed["device"]["runtime"] == "ai_edge_litert" and compressed["device"]["machine"]
    assert any(agent.uri in note and "device's own xnnpack kernels" in note for note in compressed["notes"])
    assert device["models"]["original"]["measured_on"] == "host"
    assert local["models"]["compressed"]["measured_on"] == "host"
    # The same kernels on the same machine: the device path gives the local path's numbers exactly.
    assert device["matching"] == local["matching"] and device["tensors"] == local["tensors"]
    assert [e["layers"] for e in device["inputs"]] == [e["layers"] for e in local["inputs"]]
    assert [e["first_jump"] for e in device["inputs"]] == [e["first_jump"] for e in local["inputs"]]
    assert all(e["reproduces"] for e in device["inputs"])

    # The agent has stopped: --device falls back to this process, and the note says so.
    fallback = _explain(capsys, str(out), "--device", "--token-file", str(agent.token_file))
    compressed = fallback["models"]["compressed"]
    assert compressed["measured_on"] == "host"
    assert any("could not be reached" in note and "measured in this process instead" in note
               for note in compressed["notes"])
    assert [e["layers"] for e in fallback["inputs"]] == [e["layers"] for e in local["inputs"]]
