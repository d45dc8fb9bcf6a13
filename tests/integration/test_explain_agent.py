"""``dflare run --explain`` end to end with the compressed model on a real agent, and without TensorFlow.

The campaign runs as a real ``dflare run`` process (the real search engine) with the compressed model
on a ``dflare-agent`` on loopback; ``--explain`` then measures every layer in this host's process.
The output must say that these are the host's kernels, not the agent's, and (same kernels on the
same machine here) every deviation must flip again. TensorFlow is made unimportable: explain needs
ai_edge_litert alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.campaign_support import model, seeds

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300  # a generous ceiling on 2 shared cores; the campaign takes seconds

_WITHOUT_TENSORFLOW = ("import sys; sys.modules['tensorflow'] = None\n"
                       "from host.cli import main\nsys.exit(main(sys.argv[1:]))")


def test_run_explain_through_the_agent_without_tensorflow(tmp_path: Path, agent_uri: str,
                                                          agent_token_file: Path | None) -> None:
    out = tmp_path / "out"
    argv = ["run", "--original", str(model("digits28", "float32")), "--compressed", str(model("digits28", "int8")),
            "--seeds", str(seeds("digits28")), "--limit", "4", "--max-queries", "2000", "--out", str(out),
            "--progress", "log", "--target", agent_uri, "--explain"]
    if agent_token_file is not None:
        argv += ["--token-file", str(agent_token_file)]
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, *argv], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"explain: {out / 'explain.json'}" in proc.stdout
    doc = json.loads((out / "explain.json").read_text())
    compressed = doc["models"]["compressed"]
    assert compressed["campaign_target"] == agent_uri and compressed["kernels"] == "xnnpack"
    assert any(agent_uri in note and "this host's" in note for note in compressed["notes"])
    assert doc["models"]["original"]["notes"] == []  # the original ran in process: nothing to warn about
    assert doc["inputs"], "the campaign found no triggering input to explain"
    assert all(e["reproduces"] for e in doc["inputs"])
    assert (out / "explain.html").read_text().count("<section") == len(doc["inputs"])

    # dflare explain on the same directory gives the same figures (the measurement is deterministic).
    again = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, "explain", str(out), "--json"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0, again.stderr[-2000:]
    redone = json.loads(again.stdout)
    assert [e["layers"] for e in redone["inputs"]] == [e["layers"] for e in doc["inputs"]]
