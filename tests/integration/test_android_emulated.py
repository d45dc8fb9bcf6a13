"""A stock arm64 phone, emulated: the self-contained runtime pushed, started and used over adb.

The simulated adbd runs in its Android-like arm64 mode (tests/adbd_sim.py, ``DeviceConfig.emulation``):
each shell command runs under proot + qemu-aarch64 over a root that holds only ``/system/bin``
(busybox as toybox), ``/data`` (what ``dflare deploy adb`` pushed) and ``/proc``; no ``/lib``,
``/usr``, ``/tmp``, ``/dev/shm``, ``HOME`` or ``TMPDIR``. The real adb-shell client pushes the runtime,
starts the agent (the bundled loader, libc and CPython running the aarch64 wheels), forwards its port
and stops it, as on a phone; the agent starts its model worker through the same loader.

Marker ``android``: ``make test-android`` (``pytest -m android``) after ``scripts/emulated_android.sh setup``;
the default suite skips these (emulation takes a minute or two). Figures measured here (runtime build,
push, agent start) are printed with ``-s`` and written to ``$DFLARE_ANDROID_DIR/figures.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from adb_shell.auth.keygen import keygen

from host.deploy.adb import RUNTIME_MARKER, AdbDeployment, AdbDeployOptions
from host.deploy.runtime_bundle import RuntimeBundle, build_runtime
from host.errors import AgentStartError, DelegateUnavailableError
from host.targets.remote import AgentProbe
from tests.adbd_sim import AdbdSim, Arm64Emulation, DeviceConfig

pytestmark = pytest.mark.android

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures"
#: Where scripts/emulated_android.sh keeps busybox, the Debian packages, the wheels and the runtime.
ANDROID_DIR = Path(os.environ.get("DFLARE_ANDROID_DIR", ROOT / ".board/android"))
AUTH_TIMEOUT_S = 2.0
#: Importing numpy + grpc + litert under qemu takes ~3 s natively-emulated; proot's syscall tracing and
#: a busy 2-core CI machine multiply that. Generous, since a slow start is not what is tested.
START_TIMEOUT_S = 240.0
#: The campaign: digits28 float32 on the host vs int8 on the phone (8 of 8 seeds trigger on x86 within 422 queries).
RUN_SEEDS = 8
RUN_MAX_QUERIES = 200
RUN_TIMEOUT_S = 1200
#: The cached figures file, merged across tests.
FIGURES = ANDROID_DIR / "figures.json"


def _record(**figures: float) -> None:
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data.update({k: round(v, 1) for k, v in figures.items()})
    FIGURES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(" ".join(f"{k}={v:.1f}s" for k, v in figures.items()))


@pytest.fixture(scope="module")
def runtime(request: pytest.FixtureRequest) -> RuntimeBundle:
    """The runtime tarball (built, or taken from the cache scripts/emulated_android.sh filled)."""
    if "android" not in (request.config.option.markexpr or ""):
        pytest.skip("the Android-like emulation runs with make test-android (pytest -m android)")
    missing = [t for t in ("proot", "qemu-aarch64-static", "mmdebstrap") if shutil.which(t) is None]
    busybox = ANDROID_DIR / "busybox/bin/busybox"
    if missing or not busybox.is_file():
        pytest.skip(f"not set up ({', '.join(missing) or busybox}): run scripts/emulated_android.sh setup")
    start = time.monotonic()
    bundle = build_runtime(cache_dir=ANDROID_DIR)
    _record(**{"runtime_build_s" if not bundle.cached else "runtime_cached_s": time.monotonic() - start})
    return bundle


@pytest.fixture()
def phone(tmp_path: Path, monkeypatch, runtime: RuntimeBundle):
    """A simulated stock arm64 phone (no Python) trusting a fresh key in ANDROID_USER_HOME."""
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path / "android"))
    monkeypatch.setenv("DFLARE_CACHE_DIR", str(ANDROID_DIR))  # adb:// targets build/reuse the runtime there
    (tmp_path / "android").mkdir()
    keygen(str(tmp_path / "android/adbkey"))
    pub = (tmp_path / "android/adbkey.pub").read_text()
    config = DeviceConfig(authorized_keys=[pub], python=None,
                          emulation=Arm64Emulation(busybox=ANDROID_DIR / "busybox/bin/busybox"))
    with AdbdSim(tmp_path / "device", config) as sim:
        yield sim


def _deployment(sim: AdbdSim, runtime: RuntimeBundle) -> AdbDeployment:
    return AdbDeployment(f"{sim.host}:{sim.port}", AdbDeployOptions(
        auth_timeout_s=AUTH_TIMEOUT_S, start_timeout_s=START_TIMEOUT_S, runtime_bundle=runtime.path),
        probe=AgentProbe())


def test_the_device_has_no_system_libc_no_dev_shm_no_home_and_runs_aarch64(phone: AdbdSim,
                                                                           runtime: RuntimeBundle) -> None:
    deployment = _deployment(phone, runtime)
    deployment.connect()
    try:
        rc, out = deployment._shell("uname -m; echo HOME=$HOME TMPDIR=$TMPDIR LANG=$LANG; "
                                    "for p in /lib /usr /tmp /dev/shm /etc/passwd /usr/bin/python3; do "
                                    "[ -e $p ] && echo present $p; done; ls /")
    finally:
        deployment.stop()
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "aarch64", out
    assert lines[1] == "HOME= TMPDIR= LANG=", out
    assert not [line for line in lines if line.startswith("present")], out
    assert "lib" not in lines[2:] and "usr" not in lines[2:], out


def test_deploy_pushes_once_runs_cpu_xnnpack_ref_and_refuses_android_delegates(phone: AdbdSim,
                                                                               runtime: RuntimeBundle) -> None:
    from host.targets import ModelSpec
    from host.targets.adb import AdbTarget

    model = FIXTURES / "models/digits28-int8.tflite"
    x = np.load(FIXTURES / "seeds/digits28.npz")["x"][:4]
    start = time.monotonic()
    target = AdbTarget(f"adb://{phone.host}:{phone.port}", AdbDeployOptions(
        auth_timeout_s=AUTH_TIMEOUT_S, start_timeout_s=START_TIMEOUT_S, runtime_bundle=runtime.path))
    first_deploy_s = time.monotonic() - start
    try:
        bundle = target.deployment.device_info["bundle"]
        assert bundle["pushed"] is True and bundle["sha256"] == runtime.sha256
        assert "data/local/tmp/dflare/runtime.staging.tar.gz" in phone.pushed
        info = target.info()
        assert info["machine"] == "aarch64" and info["delegates"] == ["cpu", "xnnpack", "ref"]
        assert "self-contained" in info["properties"]["dflare.runtime"]
        assert "gpu" in info["properties"]["dflare.unavailable_delegates"]
        for delegate in ("cpu", "xnnpack", "ref"):
            probs = target.load(ModelSpec.from_path(model, delegate=delegate)).infer(x)
            assert probs.shape == (4, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=0.02)  # int8: steps of 1/256
        for delegate in ("gpu", "nnapi", "external:/vendor/lib64/libvendor_npu_delegate.so"):
            with pytest.raises(DelegateUnavailableError) as refused:
                target.load(ModelSpec.from_path(model, delegate=delegate))
            message = str(refused.value)
            assert "self-contained Android runtime" in message and "Termux" in message, message
            assert "external:/path/lib.so" in message, message
    finally:
        target.close()
    assert not phone.sandbox.host_path("/data/local/tmp/dflare/token").exists()  # stop removed it

    # Deploying again pushes nothing but the fresh token, and the agent starts from the same runtime.
    phone.pushed.clear()
    deployment = _deployment(phone, runtime)
    start = time.monotonic()
    deployment.initialize()
    cached_deploy_s = time.monotonic() - start
    try:
        assert deployment.device_info["bundle"]["pushed"] is False
        assert sorted(phone.pushed) == ["data/local/tmp/dflare/token"]
    finally:
        deployment.stop()
    _record(first_deploy_s=first_deploy_s, push_unpack_s=bundle["push_s"], cached_deploy_s=cached_deploy_s,
            agent_start_s=deployment.device_info["agent"]["start_s"])


def test_a_changed_runtime_is_replaced_whole_and_an_incomplete_one_never_starts(phone: AdbdSim,
                                                                                runtime: RuntimeBundle) -> None:
    runtime_dir = phone.sandbox.host_path("/data/local/tmp/dflare/runtime")
    deployment = _deployment(phone, runtime)
    deployment.connect()
    try:
        deployment.check_device()
        assert deployment.push_runtime() is True
        # The launcher written into the runtime (docs/android.md, "by hand") runs the same agent.
        rc, out = deployment._shell("sh /data/local/tmp/dflare/runtime/bin/dflare-agent --version", 120)
        assert rc == 0 and out.strip().startswith("dflare-agent "), out
        # Another version was there: a marker that does not match, and a file the new one lacks.
        (runtime_dir / RUNTIME_MARKER).write_text("0" * 64 + "\n")
        (runtime_dir / "left-over.py").write_text("")
        assert deployment.push_runtime() is True
        assert not (runtime_dir / "left-over.py").exists()
        assert (runtime_dir / RUNTIME_MARKER).read_text().strip() == runtime.sha256
        assert not phone.sandbox.host_path("/data/local/tmp/dflare/runtime.staging").exists()
        # A push cut short leaves no marker: the agent is not started from what is there.
        (runtime_dir / RUNTIME_MARKER).unlink()
        with pytest.raises(AgentStartError, match="not a complete copy of runtime"):
            deployment.start_agent()
        assert deployment.pid == 0
    finally:
        deployment.stop()


def test_a_model_crashing_its_worker_costs_one_request_on_the_phone(phone: AdbdSim, runtime: RuntimeBundle) -> None:
    """The worker restarts through the bundled loader (DFLARE_AGENT_LAUNCHER) after a SIGSEGV under emulation."""
    import grpc

    from device_agent._gen import agent_pb2, agent_pb2_grpc
    from host.errors import WorkerCrashedError
    from host.targets import ModelSpec
    from host.targets.adb import AdbTarget
    from host.targets.remote import RemoteSession

    spec = ModelSpec.from_path(FIXTURES / "models/digits28-int8.tflite")
    x = np.load(FIXTURES / "seeds/digits28.npz")["x"][:4]
    target = AdbTarget(f"adb://{phone.host}:{phone.port}", AdbDeployOptions(
        auth_timeout_s=AUTH_TIMEOUT_S, start_timeout_s=START_TIMEOUT_S, runtime_bundle=runtime.path,
        extra_env={"DFLARE_AGENT_FAULT_INJECTION": "1"}))
    try:
        remote = target.remote
        expected = remote.load(spec).infer(x)
        stub = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"{remote.host}:{remote.port}"))
        response = stub.LoadModel(agent_pb2.LoadModelRequest(
            sha256=spec.sha256, delegate=spec.delegate, name=spec.name,
            delegate_options={"dflare.fault": "segv_on_infer"},
            preprocessing=agent_pb2.Preprocessing(mean=spec.preprocessing.mean, std=spec.preprocessing.std)),
            metadata=remote._metadata, timeout=START_TIMEOUT_S)
        session = RemoteSession(remote, spec, response)
        with pytest.raises(WorkerCrashedError, match="killed by SIGSEGV"):
            session.infer(x)
        assert session.infer(x).tobytes() == expected.tobytes()  # a fresh worker, same bytes
        assert target.deployment.agent_alive()
    finally:
        target.close()


def _run_args(out: Path, target: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "host.cli", "run", "--original", str(FIXTURES / "models/digits28-float32.tflite"),
            "--compressed", str(FIXTURES / "models/digits28-int8.tflite"), "--target", target,
            "--seeds", str(FIXTURES / "seeds/digits28.npz"), "--limit", str(RUN_SEEDS),
            "--max-queries", str(RUN_MAX_QUERIES), "--out", str(out), "--progress", "log", "--json", *extra]


def _outcomes(out: Path) -> dict[int, tuple]:
    from host.store import CampaignStore

    with CampaignStore.open_existing(out) as store:
        rows = [r.to_dict() for r in store.outcomes()]
    return {r["seed_index"]: (r["status"], r["queries"], r["label_original"], r["label_compressed"])
            for r in rows}


def _board_outcomes(tmp_path: Path, env: dict[str, str]) -> dict[int, tuple] | None:
    """The same campaign against the emulated board's agent (scripts/emulated_board.sh), when it is set up."""
    from tests.script_support import load_script

    board = Path(os.environ.get("DFLARE_BOARD_DIR", ROOT / ".board"))
    if not (board / "bin/python3.11").is_file():
        return None
    board_campaign = load_script("board_campaign")
    work = tmp_path / "board"
    work.mkdir()
    token_file = work / "token"
    token_file.write_text("board-token")
    token_file.chmod(0o600)
    proc, port = board_campaign.start_agent(str(board / "bin/python3.11"), f"{board / 'root/opt/site'}:{ROOT}",
                                            work, token_file)
    try:
        out = work / "out"
        done = subprocess.run(_run_args(out, f"grpc://127.0.0.1:{port}", "--token-file", str(token_file)),
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait(30)
    return _outcomes(out)


def test_dflare_run_on_the_phone_triggers_and_matches_the_emulated_board(phone: AdbdSim, tmp_path: Path) -> None:
    """float32 on the host vs int8 on the phone: every deviation found is the phone's arm64 int8 kernels'.

    The emulated board runs the same aarch64 wheels (scripts/emulated_board.sh), so the same campaign
    against it must give the same per-seed outcomes (same queries, same labels).
    """
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = subprocess.run(_run_args(out, f"adb://{phone.host}:{phone.port}"), capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=RUN_TIMEOUT_S)
    _record(campaign_s=time.monotonic() - start)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["seeds"] == RUN_SEEDS and summary["triggered"] >= 1, summary
    phone_outcomes = _outcomes(out)
    board_outcomes = _board_outcomes(tmp_path, env)
    if board_outcomes is None:
        pytest.skip(f"the phone triggered {summary['triggered']}/{RUN_SEEDS}; no emulated board to compare with "
                    "(scripts/emulated_board.sh setup)")
    assert phone_outcomes == board_outcomes
