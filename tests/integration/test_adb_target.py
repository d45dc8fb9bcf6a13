"""``adb://`` targets end to end: the real agent deployed to the simulated adbd, used through the forward.

The simulated adbd (tests/adbd_sim.py) runs in this process and the real adb-shell client talks to
it over TCP; the "device" python3 is this interpreter, so the agent pushed as a zipapp really runs.
Campaigns run through the real ``dflare run`` (a subprocess, or ``host.cli.main`` in-process when a
test needs to reach inside) with ``--target adb://HOST:PORT``; their per-seed outcomes are compared
with a campaign run in-process (``--target local:``): the agent on the simulated device runs the same
TFLite build on the same CPU, so the outcomes must be identical, and any seed lost, redone or
duplicated by a dropped link shows up.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from adb_shell.auth.keygen import keygen

from host.errors import AgentStartError
from host.store import CampaignStore
from tests.adbd_sim import AdbdSim, DeviceConfig
from tests.agent_support import start_agent

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: The simulated device answers at once; the real agent needs a few seconds to import numpy/grpc/litert.
AUTH_TIMEOUT_S = 1.0
START_TIMEOUT_S = 60.0


@pytest.fixture()
def device(tmp_path: Path, monkeypatch):
    """A simulated phone that trusts a fresh key in ANDROID_USER_HOME (where AdbTarget looks by default)."""
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path / "android"))
    (tmp_path / "android").mkdir()
    keygen(str(tmp_path / "android/adbkey"))
    pub = (tmp_path / "android/adbkey.pub").read_text()
    with AdbdSim(tmp_path / "device", DeviceConfig(authorized_keys=[pub])) as sim:
        yield sim


def _open(sim: AdbdSim, **options):
    from host.targets import open_target

    return open_target(f"adb://{sim.host}:{sim.port}", token_file=None, auth_timeout_s=AUTH_TIMEOUT_S,
                       start_timeout_s=START_TIMEOUT_S, **options)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_deploy_infer_matches_local_and_stop_cleans_up(device: AdbdSim) -> None:
    from host.targets import LocalTarget, ModelSpec

    model = ModelSpec.from_path(FIXTURES / "models/digits28-int8.tflite")
    x = np.load(FIXTURES / "seeds/digits28.npz")["x"][:16]
    target = _open(device)
    try:
        info = target.info()
        assert info["deploy"]["model"] == "Pixel 8" and info["deploy"]["abi"] == "arm64-v8a"
        pid = target.deployment.pid
        assert _pid_alive(pid)  # the agent really runs (on this machine, inside the device sandbox)
        remote_probs = target.load(model).infer(x)
    finally:
        target.close()
    local = LocalTarget()
    try:
        local_probs = local.load(model).infer(x)
    finally:
        local.close()
    np.testing.assert_array_equal(remote_probs, local_probs)
    assert device.wait_for(lambda: not _pid_alive(pid))
    agent_dir = device.sandbox.root / "data/local/tmp/dflare"
    assert not (agent_dir / "token").exists() and (agent_dir / "dflare-agent.pyz").exists()
    assert any(s.startswith("tcp:") for s in device.services_opened)


def test_target_reconnects_after_the_adb_link_drops(device: AdbdSim) -> None:
    from host.errors import TargetError
    from host.targets import ModelSpec

    model = ModelSpec.from_path(FIXTURES / "models/digits28-int8.tflite")
    x = np.load(FIXTURES / "seeds/digits28.npz")["x"][:4]
    target = _open(device)
    try:
        session = target.load(model)
        before = session.infer(x)
        assert device.drop_connections() == 1
        after = None
        for _ in range(3):  # the call in flight may fail; the channel then reconnects through the forwarder
            try:
                after = session.infer(x)
                break
            except TargetError:
                continue
        assert after is not None
        np.testing.assert_array_equal(before, after)
        assert target.info()["deploy"]["adb_reconnects"] >= 1
    finally:
        target.close()


def test_agent_that_cannot_bind_fails_with_its_log_tail(device: AdbdSim) -> None:
    taken = socket.create_server(("127.0.0.1", 0))  # the "device" loopback is this machine's
    try:
        with pytest.raises(AgentStartError) as info:
            _open(device, device_port=taken.getsockname()[1])
    finally:
        taken.close()
    message = str(info.value)
    assert message.startswith(f"adb://{device.host}:{device.port}: ")
    assert "agent.log" in message and "(empty)" not in message


def test_agent_answering_with_another_token_is_refused(device: AdbdSim, tmp_path: Path) -> None:
    """Something else serves on the device port: healthy, but the pushed token is refused (not silently used)."""
    with start_agent(tmp_path / "squatter") as squatter:
        with pytest.raises(AgentStartError, match="refused the token pushed to .*UNAUTHENTICATED"):
            _open(device, device_port=squatter.port)
        assert squatter.alive()


# --- campaigns through the forward -------------------------------------------------------------

#: Seeds and budget: float32 vs float16, where deviations are rare, so some seeds trigger within a few
#: hundred queries and others exhaust the budget, and the campaign runs long enough (seconds) to cut its
#: link midway.
N_SEEDS = 12
MAX_QUERIES = 1000
#: The drop comes after this many seeds were reported finished (of N_SEEDS).
DROP_AFTER_SEEDS = 3
#: A real dflare run on 2 busy cores: deploy (a few s) + campaign (a few s); the ceiling is generous.
RUN_TIMEOUT_S = 300
#: The outage ends once the device has refused this many adb connection attempts: the gRPC client's
#: own retries (0.2 + 0.4 + 0.8 s, under gRPC's 1 s reconnect backoff) make at most a few, so only the
#: AdbTarget waiting for the link (an attempt every RECONNECT_POLL_S) gets there and carries the
#: campaign through. Counted rather than timed, so a slow machine cannot end the outage early.
OUTAGE_REFUSALS = 8
#: Ceiling on an outage that waits for refusals (the campaign makes calls at once after the cut).
OUTAGE_CEILING_S = 120.0

_SEED_LINE = re.compile(r"^\[\d+/\d+\] seed (\d+) (\w+)")


def _run_args(out: Path, target: str, *extra: str) -> list[str]:
    return ["run", "--original", str(FIXTURES / "models/digits28-float32.tflite"),
            "--compressed", str(FIXTURES / "models/digits28-float16.tflite"),
            "--seeds", str(FIXTURES / "seeds/digits28.npz"), "--limit", str(N_SEEDS),
            "--max-queries", str(MAX_QUERIES), "--out", str(out), "--progress", "log", "--target", target, *extra]


def _dflare(*args: str) -> list[str]:
    return [sys.executable, "-m", "host.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # ANDROID_USER_HOME comes from the device fixture


def _outcomes(out: Path) -> dict[int, dict]:
    with CampaignStore.open_existing(out) as store:
        rows = [r.to_dict() for r in store.outcomes()]
    assert len(rows) == len({r["seed_index"] for r in rows}), "a seed is stored twice"
    return {r["seed_index"]: r for r in rows}


def _comparable(outcomes: dict[int, dict]) -> dict[int, tuple]:
    """What the same campaign elsewhere must reproduce per seed (timings aside)."""
    return {i: (r["status"], r["queries"], r["label_original"], r["label_compressed"], r["seed_label"])
            for i, r in outcomes.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, tuple]:
    """The same campaign with both models in-process: the per-seed outcomes every adb run must match."""
    out = tmp_path_factory.mktemp("reference") / "out"
    proc = subprocess.run(_dflare(*_run_args(out, "local:")), capture_output=True, text=True, cwd=ROOT, env=_env(),
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    outcomes = _outcomes(out)
    assert len(outcomes) == N_SEEDS and any(r["status"] == "exhausted" for r in outcomes.values())
    return _comparable(outcomes)


def _start_run(out: Path, sim: AdbdSim, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_dflare(*_run_args(out, f"adb://{sim.host}:{sim.port}", *extra)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())


def test_dflare_run_on_adb_target_records_the_device_and_cleans_up(device: AdbdSim, tmp_path: Path,
                                                                   reference: dict[int, tuple]) -> None:
    out = tmp_path / "out"
    proc = _start_run(out, device, "--json")
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["triggered"] > 0 and summary["out"] == str(out)
    assert _comparable(_outcomes(out)) == reference  # through deploy + forward, exactly as in-process

    with CampaignStore.open_existing(out) as store:
        recorded = store.targets()["compressed"]
        runs = store.runs()
    assert recorded["uri"] == f"adb://{device.host}:{device.port}"
    facts = recorded["device"]["deploy"]  # what the deployment found on the device, kept with the run
    assert (facts["model"], facts["manufacturer"], facts["soc"]) == ("Pixel 8", "Google", "Tensor G3")
    assert (facts["android_release"], facts["sdk"], facts["abi"]) == ("14", 34, "arm64-v8a")
    assert facts["thermal_c"] == {"cpu-big": 41.0, "battery": 30.5}
    assert facts["python"]["version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert recorded["device"]["protocol"]  # and what the agent itself reported
    assert json.loads((out / "summary.json").read_text())["per_target"]["compressed"]["device"]["deploy"] == facts
    assert [r["status"] for r in runs] == ["completed"]

    # dflare run stopped the agent and removed its token; the bundle stays for the next deploy.
    assert device.wait_for(lambda: not _pid_alive(facts["agent"]["pid"]))
    agent_dir = device.sandbox.root / "data/local/tmp/dflare"
    assert not (agent_dir / "token").exists() and (agent_dir / "dflare-agent.pyz").exists()


def _cut_link_after_seeds(proc: subprocess.Popen, sim: AdbdSim, seeds: int, refusals: int | None) -> list[str]:
    """Read the run's progress; after ``seeds`` finished seeds, drop every adb connection and refuse new
    ones until ``refusals`` attempts were refused (None: until the test lets the device back).

    Returns:
        The stderr lines read, with a ``<link cut ...>`` line where the cut happened.
    """
    lines: list[str] = []
    finished = 0
    for line in proc.stderr:
        lines.append(line)
        if _SEED_LINE.match(line):
            finished += 1
            if finished == seeds:
                sim.accepting = False
                assert sim.drop_connections() >= 1  # the forward's connection was live
                if refusals is not None:
                    target = sim.refused_connections + refusals
                    threading.Thread(target=_reopen_after, args=(sim, target), daemon=True).start()
                lines.append(f"<link cut, {len(sim.services_opened)} services opened so far>\n")
    return lines


def _reopen_after(sim: AdbdSim, refused: int) -> None:
    sim.wait_for(lambda: sim.refused_connections >= refused, OUTAGE_CEILING_S)
    sim.accepting = True


def test_campaign_rides_out_an_adb_outage(device: AdbdSim, tmp_path: Path, reference: dict[int, tuple]) -> None:
    out = tmp_path / "out"
    proc = _start_run(out, device)
    try:
        lines = _cut_link_after_seeds(proc, device, DROP_AFTER_SEEDS, OUTAGE_REFUSALS)
    finally:
        proc.wait(timeout=RUN_TIMEOUT_S)
        device.accepting = True
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    cut = next(i for i, line in enumerate(lines) if line.startswith("<link cut"))
    assert sum(bool(_SEED_LINE.match(line)) for line in lines[cut:]) == N_SEEDS - DROP_AFTER_SEEDS  # mid-campaign
    assert "the adb link dropped during running digits28-float16.tflite and is back" in stderr
    opened_at_cut = int(re.search(r"(\d+) services opened", lines[cut]).group(1))
    assert any(s.startswith("tcp:") for s in device.services_opened[opened_at_cut:])  # inference went on after it
    assert _comparable(_outcomes(out)) == reference  # nothing lost, redone or duplicated
    with CampaignStore.open_existing(out) as store:
        assert [r["status"] for r in store.runs()] == ["completed"]


def test_lasting_outage_stops_the_campaign_and_a_rerun_resumes_it(device: AdbdSim, tmp_path: Path, monkeypatch,
                                                                  reference: dict[int, tuple]) -> None:
    from host.exit_codes import ExitCode
    from host.targets.adb import RECONNECT_TIMEOUT_ENV

    monkeypatch.setenv(RECONNECT_TIMEOUT_ENV, "2")  # the device will not come back within 2 s
    out = tmp_path / "out"
    proc = _start_run(out, device)
    try:
        lines = _cut_link_after_seeds(proc, device, DROP_AFTER_SEEDS, None)
    finally:
        proc.wait(timeout=RUN_TIMEOUT_S)
    stderr = "".join(lines)
    assert proc.returncode == ExitCode.unreachable, stderr
    error = next(line for line in lines if line.startswith("dflare: error: "))
    assert error.startswith(f"dflare: error: adb://{device.host}:{device.port}: running digits28-float16.tflite: "
                            "the adb connection dropped and did not come back within ")
    assert "rerun the same command" in error
    stopped = _outcomes(out)
    assert DROP_AFTER_SEEDS <= len(stopped) < N_SEEDS
    with CampaignStore.open_existing(out) as store:
        assert [r["status"] for r in store.runs()] == ["failed"]

    device.accepting = True  # the device is back: the same command resumes the campaign
    rerun = subprocess.run(_dflare(*_run_args(out, f"adb://{device.host}:{device.port}", "--json")),
                           capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=RUN_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr
    final = _outcomes(out)
    assert {i: final[i] for i in stopped} == stopped  # finished seeds were kept, not redone
    assert _comparable(final) == reference  # and nothing was lost or duplicated
    with CampaignStore.open_existing(out) as store:
        assert [r["status"] for r in store.runs()] == ["failed", "completed"]
