"""Lab mode with in-process devices: config, history, runner failure handling, health checks, regressions."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from host.cli import main
from host.errors import ConfigError, TargetUnreachableError
from host.lab import History, LabRunner, find_regressions, load_lab_config
from host.lab.health import record_golden
from host.targets import LocalTarget
from tests.lab_support import FLOAT, INT8, SEEDS, seed_labels, swap_classes, write_lab


# -- config ---------------------------------------------------------------------------------------
def test_config_reads_devices_models_and_resolves_paths(tmp_path):
    path = write_lab(tmp_path / "lab.toml", [("a", "local:"), ("b", "grpc://127.0.0.1:50051")], INT8,
                     delegates=("xnnpack", "ref"))
    cfg = load_lab_config(path)
    assert [d.name for d in cfg.devices] == ["a", "b"]
    assert cfg.delegates == ("xnnpack", "ref")
    assert cfg.history == str(tmp_path / "history.sqlite") and cfg.out == tmp_path / "runs"
    assert cfg.models[0].compressed == INT8 and cfg.budget.seeds == 12 and cfg.retries == 1
    adb = tmp_path / "adb.toml"
    adb.write_text(path.read_text().replace('uri = "local:"', 'adb_serial = "R58M123"'))
    assert load_lab_config(adb).devices[0].uri == "adb://R58M123"


@pytest.mark.parametrize("change, fragment", [
    (("retries = 1", "retrys = 1"), "did you mean 'retries'"),
    (('name = "b"', 'name = "a"'), "used twice"),
    (('uri = "local:"', 'uri = "local:"\nadb_serial = "X"'), "exactly one of uri"),
    (('delegates = ["xnnpack"]', 'delegates = ["tpu"]'), "unknown delegate"),
    (("max_queries = 60", "max_queries = -1"), "at least 0"),
    (("seeds = 12", 'seeds = "all"'), "expected an integer"),
    (("seeds = 12", 'seeds = 12\nalgo = "hillclimb"'), "unknown algorithm 'hillclimb'"),
])
def test_config_errors_name_the_key(tmp_path, change, fragment):
    path = write_lab(tmp_path / "lab.toml", [("a", "local:"), ("b", "local:")], INT8)
    path.write_text(path.read_text().replace(*change, 1))
    with pytest.raises(ConfigError, match=fragment):
        load_lab_config(path)


# -- history --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite-path", "sqlalchemy-url"])
def test_history_round_trip_and_previous_run(tmp_path, kind):
    if kind == "sqlalchemy-url":
        pytest.importorskip("sqlalchemy")
        url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    else:
        url = str(tmp_path / "h.sqlite")
    history = History(url)
    for run_id, started in (("r1", "2024-01-01T00:00:00"), ("r2", "2024-01-02T00:00:00")):
        history.start_run(run_id, "lab", started, "0.1.0", {"k": 1})
        history.record_combo({"run_id": run_id, "device": "d", "model": "m", "delegate": "cpu", "status": "passed",
                              "latency_p50_ms": 1.5}, [{"seed_index": 0, "deviates": 1, "status": "", "queries": 0}])
        history.finish_run(run_id, started, "finished")
    history.close()
    again = History(url)  # reopening keeps everything
    assert [r["run_id"] for r in again.runs("lab")] == ["r1", "r2"]
    assert again.previous_run("r2")["run_id"] == "r1" and again.previous_run("r1") is None
    assert again.combos("r2")[0]["latency_p50_ms"] == 1.5 and again.seeds("r1")[0]["deviates"] == 1
    with pytest.raises(ConfigError, match="2 runs matching 'r'"):
        again.run("r")


# -- runner ---------------------------------------------------------------------------------------
class _VanishingTarget(LocalTarget):
    """A real in-process target that stops answering (like a killed agent) after ``alive_loads`` loads."""

    state = {"loads": 0, "gone": False}

    def __init__(self, alive_loads: int) -> None:
        super().__init__()
        self.alive_loads = alive_loads

    def info(self) -> dict:
        if self.state["gone"]:
            raise TargetUnreachableError(self, "connection refused")
        return super().info()

    def load(self, model):
        if self.state["gone"] or self.state["loads"] >= self.alive_loads:
            self.state["gone"] = True
            raise TargetUnreachableError(self, "connection reset by peer")
        self.state["loads"] += 1
        return super().load(model)


def _opener(alive_loads: int):
    _VanishingTarget.state = {"loads": 0, "gone": False}

    def open_target(uri: str, token: str | None):
        if uri == "grpc://dead:1":
            raise TargetUnreachableError(uri, "connection refused")
        if uri == "grpc://vanishing:1":
            return _VanishingTarget(alive_loads)
        return LocalTarget()

    return open_target


def test_dead_and_vanishing_devices_fail_while_the_others_complete(tmp_path):
    path = write_lab(tmp_path / "lab.toml", [("good", "local:"), ("dead", "grpc://dead:1"),
                                             ("vanishing", "grpc://vanishing:1")], INT8,
                     delegates=("xnnpack", "ref"), seeds=6, max_queries=0)
    cfg = load_lab_config(path)
    history = History(cfg.history)
    sleeps: list[float] = []
    events = []
    result = LabRunner(cfg, history, open_target=_opener(alive_loads=1), on_event=events.append,
                       sleep=sleeps.append).run()
    status = {(c["device"], c["delegate"]): c["status"] for c in result.combos}
    assert status == {
        ("good", "xnnpack"): "passed", ("good", "ref"): "passed",
        ("dead", "xnnpack"): "skipped", ("dead", "ref"): "skipped",
        ("vanishing", "xnnpack"): "passed", ("vanishing", "ref"): "failed",
    }
    devices = {d.name: d for d in result.devices}
    assert devices["good"].status == "ok"
    assert devices["dead"].status == "failed" and "connection refused" in devices["dead"].error
    assert devices["vanishing"].status == "failed" and "disappeared" in devices["vanishing"].error
    # retries = 1, backoff_s = 0.05: the dead device's one connect retry; the vanishing device's
    # combination retry, whose reconnect itself retries once.
    assert sleeps == [0.05, 0.05, 0.05]
    assert any(e.kind == "retry" and e.device == "dead" for e in events)
    stored = {d["device"]: d["status"] for d in history.devices(result.run_id)}
    assert stored == {"good": "ok", "dead": "failed", "vanishing": "failed"}
    assert history.run(result.run_id)["status"] == "finished"
    # The seed comparison matches a direct computation on the passed combinations.
    direct = seed_labels(FLOAT, "cpu", 6) != seed_labels(INT8, "xnnpack", 6)
    good = [s for s in history.seeds(result.run_id) if s["device"] == "good" and s["delegate"] == "xnnpack"]
    assert [bool(s["deviates"]) for s in good] == list(direct)


def test_backoff_doubles_between_attempts(tmp_path):
    path = write_lab(tmp_path / "lab.toml", [("dead", "grpc://dead:1")], INT8, max_queries=0)
    path.write_text(path.read_text().replace("retries = 1", "retries = 3"))
    sleeps: list[float] = []
    result = LabRunner(load_lab_config(path), History(str(tmp_path / "h.sqlite")), open_target=_opener(0),
                       sleep=sleeps.append).run()
    assert sleeps == [0.05, 0.1, 0.2]
    assert result.devices[0].status == "failed" and result.counts() == {"skipped": 1}


def test_a_device_failing_its_golden_inference_is_taken_out(tmp_path, monkeypatch):
    golden_in = tmp_path / "golden-in.npz"
    with np.load(SEEDS) as data:
        np.savez(golden_in, x=data["x"][:4])
    extra = (f'[health]\nmodel = "{INT8}"\ninputs = "{golden_in}"\nexpected = "golden.npz"\n')
    path = write_lab(tmp_path / "lab.toml", [("ok", "local:"), ("broken", "grpc://broken:1")], INT8, seeds=4,
                     max_queries=0, extra=extra)
    cfg = load_lab_config(path)
    record_golden(LocalTarget(), cfg.health)
    broken_expected = tmp_path / "golden-broken.npz"
    with np.load(cfg.health.expected) as data:
        np.savez(broken_expected, probs=data["probs"][:, ::-1])  # what a broken device would be compared with

    class _BrokenDevice(LocalTarget):
        """Answers, but its golden inference is compared against outputs it cannot produce."""

    def open_target(uri: str, token: str | None):
        return _BrokenDevice() if uri == "grpc://broken:1" else LocalTarget()

    import host.lab.runner as runner_module

    real_check = runner_module.check_health

    def check(target, health):
        if isinstance(target, _BrokenDevice):
            health = type(health)(health.model, health.inputs, broken_expected, health.delegate, health.atol)
        return real_check(target, health)

    sleeps: list[float] = []
    monkeypatch.setattr(runner_module, "check_health", check)
    result = LabRunner(cfg, History(cfg.history), open_target=open_target, sleep=sleeps.append).run()
    devices = {d.name: d for d in result.devices}
    assert devices["ok"].status == "ok"
    assert devices["broken"].status == "unhealthy" and "golden inference differs" in devices["broken"].error
    assert {c["device"]: c["status"] for c in result.combos} == {"ok": "passed", "broken": "skipped"}
    assert sleeps == []  # wrong outputs are not retried


# -- regressions ----------------------------------------------------------------------------------
def test_a_changed_compressed_model_is_a_regression(tmp_path, capsys):
    path = write_lab(tmp_path / "lab.toml", [("dev", "local:")], INT8, seeds=12, max_queries=40)
    assert main(["lab", "run", str(path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["baseline"] is None and first["counts"] == {"passed": 1}
    assert first["combos"][0]["triggered"] is not None

    changed = swap_classes(INT8, tmp_path / "digits28-int8-swapped.tflite")
    path.write_text(path.read_text().replace(str(INT8), str(changed)))
    assert main(["lab", "run", str(path), "--json"]) == 1
    second = json.loads(capsys.readouterr().out)
    assert second["baseline"] == first["run_id"]
    before = seed_labels(FLOAT, "cpu", 12) != seed_labels(INT8, "xnnpack", 12)
    after = seed_labels(FLOAT, "cpu", 12) != seed_labels(changed, "xnnpack", 12)
    expected = [int(i) for i in np.flatnonzero(after & ~before)]
    assert expected, "the swapped model must deviate somewhere for this test to mean anything"
    (regression,) = second["regressions"]
    assert regression["kind"] == "new_deviation" and regression["seeds"] == expected
    assert second["combos"][0]["model_sha256"] != first["combos"][0]["model_sha256"]

    junit = tmp_path / "junit.xml"
    assert main(["lab", "report", str(path), "--junit", str(junit), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["run_id"] == second["run_id"] and report["baseline"] == first["run_id"]
    assert [r["run_id"] for r in report["trend"]] == [first["run_id"], second["run_id"]]
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case.get("name") == "digits28[xnnpack]" and case.find("failure").get("type") == "new_deviation"
    # The first run against itself has nothing new.
    assert main(["lab", "report", str(path), "--run", first["run_id"], "--baseline", first["run_id"],
                 "--json"]) == 0


def test_latency_regression_needs_ratio_and_absolute_delta(tmp_path):
    history = History(str(tmp_path / "h.sqlite"))
    for run_id, p50 in (("r1", 1.0), ("r2", 2.0), ("r3", 1.2)):
        history.start_run(run_id, "lab", run_id, "0.1.0", {})
        history.record_combo({"run_id": run_id, "device": "d", "model": "m", "delegate": "gpu", "status": "passed",
                              "latency_p50_ms": p50}, [])
        history.finish_run(run_id, run_id, "finished")
    (slow,) = find_regressions(history, "r2", "r1", latency_ratio=1.5, latency_min_delta_ms=0.05)
    assert slow.kind == "latency" and "2.00x" in slow.detail
    assert find_regressions(history, "r3", "r1", latency_ratio=1.5, latency_min_delta_ms=0.05) == []
    assert find_regressions(history, "r2", "r1", latency_ratio=1.5, latency_min_delta_ms=5.0) == []


def test_lab_run_reports_a_missing_model_as_a_usage_error(tmp_path):
    path = write_lab(tmp_path / "lab.toml", [("dev", "local:")], Path(tmp_path / "missing.tflite"))
    assert main(["lab", "run", str(path)]) == 2
