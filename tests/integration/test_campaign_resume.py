"""``dflare run`` end to end: SIGKILL mid-campaign, rerun, and nothing lost, redone or duplicated.

The campaign runs as a real ``dflare run`` process with the real search engine; the compressed
model runs through a real ``dflare-agent`` on loopback (the ``agent`` fixture), the original
in-process. The killed-and-resumed campaign must end with exactly
the per-seed outcomes of an uninterrupted campaign (the engine derives each seed's randomness from
its index), and summary.json and junit.xml must parse and agree with the store.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from host.search.results import SeedStatus
from host.store import CampaignStore
from tests.campaign_support import model, seeds

ROOT = Path(__file__).resolve().parents[2]

N_SEEDS = 40
MAX_QUERIES = 3000  # small enough that exhausted seeds end quickly, large enough that most seeds trigger
KILL_AFTER_SEEDS = 4  # searched seeds reported finished before the kill
RUN_TIMEOUT_S = 300  # a generous ceiling on 2 shared cores; the campaign takes seconds

_SEED_LINE = re.compile(r"^\[\d+/\d+\] seed (\d+) (\w+)")


@pytest.fixture
def target_args(agent_uri: str, agent_token_file: Path | None) -> list[str]:
    """Flags that put the compressed model on the real agent (tests/integration/conftest.py)."""
    args = ["--target", agent_uri]
    if agent_token_file is not None:
        args += ["--token-file", str(agent_token_file)]
    return args


def dflare_run(out: Path, target_args: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "host.cli", "run",
            "--original", str(model("digits28", "float32")), "--compressed", str(model("digits28", "int8")),
            "--seeds", str(seeds("digits28")), "--limit", str(N_SEEDS), "--max-queries", str(MAX_QUERIES),
            "--out", str(out), "--progress", "log", *target_args, *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def outcomes(out: Path) -> dict[int, dict]:
    with CampaignStore.open_existing(out) as store:
        rows = [r.to_dict() for r in store.outcomes()]
    assert len(rows) == len({r["seed_index"] for r in rows}), "a seed is stored twice"
    return {r["seed_index"]: r for r in rows}


def comparable(record: dict) -> tuple:
    """What an uninterrupted campaign must reproduce for a seed (timings aside)."""
    return (record["status"], record["queries"], record["label_original"], record["label_compressed"],
            record["seed_label"])


@pytest.mark.slow
def test_sigkill_mid_campaign_then_resume(tmp_path: Path, target_args: list[str]) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(dflare_run(out, target_args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env())
    reported: list[int] = []
    searched_reported = 0
    try:
        for line in proc.stderr:
            match = _SEED_LINE.match(line)
            if not match:
                continue
            reported.append(int(match.group(1)))
            searched_reported += match.group(2) != SeedStatus.skipped.value
            if searched_reported >= KILL_AFTER_SEEDS:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, "the campaign ended before it could be killed"

    after_kill = outcomes(out)
    assert set(reported) <= set(after_kill)  # every seed reported finished was stored
    assert len(after_kill) < N_SEEDS  # killed mid-campaign

    rerun = subprocess.run(dflare_run(out, target_args, "--json"), capture_output=True, text=True, cwd=ROOT,
                           env=env(), timeout=RUN_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr
    printed = json.loads(rerun.stdout)
    final = outcomes(out)
    assert set(final) == set(range(N_SEEDS))  # nothing lost
    for index, record in after_kill.items():
        assert final[index] == record  # finished seeds were not redone
    with CampaignStore.open_existing(out) as store:
        runs = store.runs()
        inputs = store.inputs()
    # The killed run never got to say so; the resume marked it, ended at its last finished seed.
    assert [r["status"] for r in runs] == ["interrupted", "completed"]
    killed_seeds = [r["finished_at"] for r in after_kill.values() if r["run_id"] == runs[0]["run_id"]]
    assert runs[0]["ended_at"] == (max(killed_seeds) if killed_seeds else runs[0]["started_at"])
    assert {r["run_id"] for i, r in final.items() if i not in after_kill} == {runs[1]["run_id"]}

    # An uninterrupted campaign gives the same per-seed outcomes.
    reference = tmp_path / "reference"
    ref = subprocess.run(dflare_run(reference, target_args), capture_output=True, text=True, cwd=ROOT, env=env(),
                         timeout=RUN_TIMEOUT_S)
    assert ref.returncode == 0, ref.stderr
    expected = outcomes(reference)
    assert {i: comparable(r) for i, r in final.items()} == {i: comparable(r) for i, r in expected.items()}

    # summary.json and junit.xml parse and agree with the store.
    summary = json.loads((out / "summary.json").read_text())
    triggered = [r for r in final.values() if r["status"] == "triggered"]
    searched = [r for r in final.values() if r["status"] != "skipped"]
    assert {k: summary[k] for k in printed} == printed
    assert summary["complete"] is True and summary["seeds_requested"] == N_SEEDS
    assert summary["per_target"]["compressed"]["uri"] == target_args[1]  # really through the agent
    assert summary["per_target"]["compressed"]["device"]
    assert (summary["seeds"], summary["triggered"]) == (len(searched), len(triggered))
    assert summary["total_queries"] == sum(r["queries"] for r in final.values())
    assert len(summary["triggering_inputs"]) == len(inputs)
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert sorted(c.get("name") for c in cases) == sorted(f"seed_{i}" for i in range(N_SEEDS))
    failures = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failures == {f"seed_{r['seed_index']}" for r in triggered}
    assert int(suite.get("failures")) == len(triggered)
    assert int(suite.get("skipped")) == sum(r["status"] == "skipped" for r in final.values())
    by_seed = {r.seed_index: r for r in inputs}
    for case in cases:
        failure = case.find("failure")
        if failure is not None:
            record = by_seed[int(case.get("name").removeprefix("seed_"))]
            assert failure.get("message") == (
                f"original label {record.label_original} != compressed label {record.label_compressed}")
    pngs = sorted(p.name for p in (out / "inputs").glob("*.png"))
    assert [n for n in pngs if not n.endswith("_min.png")] == sorted(f"{r.stem}.png" for r in inputs)
    # every triggering input was minimized (the killed run's ones too, on resume)
    assert [n for n in pngs if n.endswith("_min.png")] == sorted(f"{r.stem}_min.png" for r in inputs
                                                                if r.status.value == "triggered")


@pytest.mark.parametrize("where", ["in process", "through the agent"])  # the agent: mid-RPC interrupts
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_cleanly_with_reports(tmp_path: Path, sig: signal.Signals, where: str,
                                                      request: pytest.FixtureRequest) -> None:
    out = tmp_path / "stopped"
    targets = ["--target", "local:"] if where == "in process" else request.getfixturevalue("target_args")
    proc = subprocess.Popen(dflare_run(out, targets), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env())
    try:
        for line in proc.stderr:
            match = _SEED_LINE.match(line)
            if match and match.group(2) != SeedStatus.skipped.value:
                proc.send_signal(sig)
                break
        rest = proc.stderr.read()
    finally:
        proc.wait(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 130, rest
    assert "finished seeds are saved, rerun the same command to resume" in rest
    stored = outcomes(out)
    summary = json.loads((out / "summary.json").read_text())  # written on the way out
    assert summary["seeds_finished"] == len(stored) and summary["complete"] is (len(stored) == N_SEEDS)
    if where == "through the agent":
        assert summary["per_target"]["compressed"]["uri"] == targets[1]
    with CampaignStore.open_existing(out) as store:
        assert [r["status"] for r in store.runs()] == ["interrupted"]
