"""Lab mode against three real agents on loopback: one is killed mid-run; a changed model regresses."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from host.cli import main
from host.lab import History, LabRunner, load_lab_config
from tests.lab_support import FLOAT, INT8, seed_labels, swap_classes, write_lab

pytestmark = pytest.mark.slow

#: Seeds and search queries per combination: enough for a real search and seed comparison through
#: the agents, small enough that both runs take seconds on 2 shared cores.
SEEDS = 8
MAX_QUERIES = 40


def _lab(tmp_path, agents, compressed):
    path = write_lab(tmp_path / "lab.toml", [(name, a.uri) for name, a in agents], compressed,
                     delegates=("xnnpack", "ref"), seeds=SEEDS, max_queries=MAX_QUERIES)
    # Each device reads its own agent's token file.
    text = path.read_text()
    for name, a in agents:
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\ntoken_file = "{a.token_file}"\n', 1)
    path.write_text(text)
    return path


def test_three_agents_one_killed_mid_run_then_a_regression(tmp_path, agent_factory, capsys):
    agents = [(name, agent_factory()) for name in ("a", "b", "c")]
    victim = agents[2][1]
    path = _lab(tmp_path, agents, INT8)
    cfg = load_lab_config(path)
    events = []

    def on_event(event):
        events.append(event)
        # Kill agent c as soon as its first combination has finished: the next one finds it gone.
        if event.kind == "combo_passed" and event.device == "c" and victim.alive():
            victim.process.kill()
            victim.process.wait(10)

    history = History(cfg.history)
    first = LabRunner(cfg, history, on_event=on_event).run()
    devices = {d.name: d for d in first.devices}
    assert devices["a"].status == "ok" and devices["b"].status == "ok"
    assert devices["c"].status == "failed" and "disappeared" in devices["c"].error
    status = {(c["device"], c["delegate"]): c["status"] for c in first.combos}
    assert status == {("a", "xnnpack"): "passed", ("a", "ref"): "passed",
                      ("b", "xnnpack"): "passed", ("b", "ref"): "passed",
                      ("c", "xnnpack"): "passed", ("c", "ref"): "failed"}
    assert any(e.kind == "retry" and e.device == "c" for e in events)
    # Versions come from the agents themselves.
    for row in first.combos:
        if row["status"] == "passed":
            assert row["agent_version"] and row["runtime"] and row["runtime_version"]
    # Through the agents, the seed comparison equals a direct in-process computation.
    direct = {d: seed_labels(FLOAT, "cpu", SEEDS) != seed_labels(INT8, d, SEEDS) for d in ("xnnpack", "ref")}
    for s in history.seeds(first.run_id):
        if s["device"] in ("a", "b"):
            assert bool(s["deviates"]) == bool(direct[s["delegate"]][s["seed_index"]])
    stored = {d["device"]: d["status"] for d in history.devices(first.run_id)}
    assert stored == {"a": "ok", "b": "ok", "c": "failed"}
    history.close()

    # Second run through the CLI, with a deliberately changed compressed model: a regression, exit 1.
    changed = swap_classes(INT8, tmp_path / "digits28-int8-changed.tflite")
    path.write_text(path.read_text().replace(str(INT8), str(changed)))
    assert main(["lab", "run", str(path), "--json"]) == 1
    second = json.loads(capsys.readouterr().out)
    assert second["baseline"] == first.run_id
    assert {d["name"]: d["status"] for d in second["devices"]} == {"a": "ok", "b": "ok", "c": "failed"}
    new = {(r["device"], r["delegate"]): r["seeds"] for r in second["regressions"] if r["kind"] == "new_deviation"}
    after = seed_labels(FLOAT, "cpu", SEEDS) != seed_labels(changed, "xnnpack", SEEDS)
    expected = [int(i) for i in np.flatnonzero(after & ~direct["xnnpack"])]
    assert expected and new[("a", "xnnpack")] == expected and new[("b", "xnnpack")] == expected
    assert ("c", "xnnpack") not in new  # a dead device is a failure, not a regression

    junit = ET.parse(tmp_path / "runs" / second["run_id"] / "junit.xml").getroot()
    cases = {case.get("classname") + "/" + case.get("name"): case for case in junit.iter("testcase")}
    assert cases["test-lab.a/digits28[xnnpack]"].find("failure") is not None
    assert cases["test-lab.c/digits28[ref]"].find("skipped") is not None
    assert main(["lab", "report", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in report["trend"]] == [first.run_id, second["run_id"]]
