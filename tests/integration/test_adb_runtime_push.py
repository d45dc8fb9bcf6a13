"""Pushing the self-contained runtime over the simulated adbd (no emulation: a small stand-in tarball).

The real runtime is exercised end to end under emulation in test_android_emulated.py (``make
test-android``); here the push protocol itself, fast: pushed once, skipped while the device's marker
matches, replaced whole when it does not, and never started without a matching marker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from adb_shell.auth.keygen import keygen

from host.deploy import runtime_bundle
from host.deploy.adb import RUNTIME_MARKER, AdbDeployment, AdbDeployOptions
from host.errors import AgentStartError
from host.targets.remote import AgentProbe
from tests.adbd_sim import AdbdSim, DeviceConfig

RUNTIME_TARBALL = "data/local/tmp/dflare/runtime.staging.tar.gz"


def _fake_runtime(tmp_path: Path, version: str) -> Path:
    tree = tmp_path / f"tree-{version}"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin/python3").write_text(f"not really python {version}\n")
    (tree / f"only-in-{version}").write_text("")
    out = tmp_path / f"runtime-{version}.tar.gz"
    runtime_bundle.write_tarball(tree, out)
    digest, unpacked, files = runtime_bundle.tree_digest(tree)
    bundle = runtime_bundle.RuntimeBundle(path=out, platform="android-arm64",
                                          sha256=runtime_bundle._file_sha256(out), size_bytes=out.stat().st_size,
                                          unpacked_bytes=unpacked, files=files, tree_sha256=digest, cached=False,
                                          build_s=0.0)
    Path(str(out) + ".json").write_text(json.dumps(bundle.to_dict()))
    return out


@pytest.fixture()
def sim(tmp_path: Path):
    keygen(str(tmp_path / "adbkey"))
    with AdbdSim(tmp_path / "device", DeviceConfig(authorized_keys=[(tmp_path / "adbkey.pub").read_text()])) as sim:
        yield sim


def _push(sim: AdbdSim, tarball: Path, tmp_path: Path) -> AdbDeployment:
    deployment = AdbDeployment(f"{sim.host}:{sim.port}", AdbDeployOptions(
        key_path=tmp_path / "adbkey", auth_timeout_s=1.0, runtime="runtime", runtime_bundle=tarball),
        probe=AgentProbe())
    deployment.connect()
    deployment.check_device()
    deployment.push_agent()
    return deployment


def test_runtime_is_pushed_once_replaced_whole_and_never_started_incomplete(sim: AdbdSim, tmp_path: Path) -> None:
    one, two = _fake_runtime(tmp_path, "one"), _fake_runtime(tmp_path, "two")
    runtime_dir = sim.sandbox.host_path("/data/local/tmp/dflare/runtime")
    deployment = _push(sim, one, tmp_path)
    try:
        assert deployment.device_info["bundle"]["pushed"] is True and RUNTIME_TARBALL in sim.pushed
        assert deployment.device_info["python"]["runtime"].startswith("self-contained")
        assert (runtime_dir / "only-in-one").exists() and not (runtime_dir.parent / "runtime.staging").exists()
        assert (runtime_dir / RUNTIME_MARKER).read_text().strip() == deployment.runtime.sha256
    finally:
        deployment.stop()

    sim.pushed.clear()
    deployment = _push(sim, one, tmp_path)  # unchanged: only the token goes
    deployment.stop()
    assert deployment.device_info["bundle"]["pushed"] is False
    assert sorted(sim.pushed) == ["data/local/tmp/dflare/token"]

    deployment = _push(sim, two, tmp_path)  # changed: replaced whole
    try:
        assert deployment.device_info["bundle"]["pushed"] is True
        assert (runtime_dir / "only-in-two").exists() and not (runtime_dir / "only-in-one").exists()
        (runtime_dir / RUNTIME_MARKER).unlink()  # as if the unpack had been cut short
        with pytest.raises(AgentStartError, match="not a complete copy of runtime"):
            deployment.start_agent()
        assert deployment.pid == 0
    finally:
        deployment.stop()


def test_auto_brings_the_runtime_to_an_arm64_phone_without_python_and_uses_a_python_when_there(tmp_path: Path) -> None:
    keygen(str(tmp_path / "adbkey"))
    tarball = _fake_runtime(tmp_path, "one")
    for python, uses_runtime in ((None, True), (sys.executable, False)):
        config = DeviceConfig(authorized_keys=[(tmp_path / "adbkey.pub").read_text()], python=python)
        with AdbdSim(tmp_path / f"device-{uses_runtime}", config) as sim:
            deployment = AdbDeployment(f"{sim.host}:{sim.port}", AdbDeployOptions(
                key_path=tmp_path / "adbkey", auth_timeout_s=1.0, runtime_bundle=tarball), probe=AgentProbe())
            deployment.connect()
            try:
                info = deployment.check_device()
            finally:
                deployment.stop()
            assert deployment.uses_runtime is uses_runtime
            if uses_runtime:  # why the device Python was not used is kept with the facts
                assert "no Python 3.10+" in info["device_python"]
            else:
                assert info["python"]["path"] == "python3"


def test_a_runtime_that_does_not_fit_is_refused_before_pushing(tmp_path: Path) -> None:
    from host.errors import PushError

    keygen(str(tmp_path / "adbkey"))
    config = DeviceConfig(authorized_keys=[(tmp_path / "adbkey.pub").read_text()], free_bytes=1 << 20)
    with AdbdSim(tmp_path / "device", config) as sim:
        with pytest.raises(PushError, match="only 1 MiB free.*free some space"):
            _push(sim, _fake_runtime(tmp_path, "one"), tmp_path)
        assert RUNTIME_TARBALL not in sim.pushed
