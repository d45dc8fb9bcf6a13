"""Lab scale-out pieces that need no cluster: the executor key, worker device flags, resume, artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from host.errors import ConfigError
from host.lab import History, LabRunner, load_lab_config
from host.lab.dask_worker import HeldDevice, resource
from host.lab.runner import TRIGGERING_FILE, combo_folder
from host.targets import LocalTarget
from tests.lab_support import INT8, write_lab


@pytest.mark.parametrize("value, address", [
    ('"dask://lab-sched:8786"', "tcp://lab-sched:8786"),
    ('"tcp://10.0.0.2:8786"', "tcp://10.0.0.2:8786"),
    ('"tls://sched.lab:8786"', "tls://sched.lab:8786"),
    ('"local"', None),
])
def test_executor_key(tmp_path, value, address):
    path = write_lab(tmp_path / "lab.toml", [("a", "local:")], INT8)
    path.write_text(path.read_text().replace("retries = 1", f"retries = 1\nexecutor = {value}"))
    assert load_lab_config(path).executor == address


@pytest.mark.parametrize("value", ['"dask://no-port"', '"http://x:1"', "8786"])
def test_a_bad_executor_names_the_key(tmp_path, value):
    path = write_lab(tmp_path / "lab.toml", [("a", "local:")], INT8)
    path.write_text(path.read_text().replace("retries = 1", f"retries = 1\nexecutor = {value}"))
    with pytest.raises(ConfigError, match=r"\[lab\]\.executor"):
        load_lab_config(path)


def test_with_an_executor_a_device_needs_only_a_name(tmp_path):
    path = write_lab(tmp_path / "lab.toml", [("a", "local:")], INT8)
    bare = path.read_text().replace('uri = "local:"\n', "")
    path.write_text(bare)
    with pytest.raises(ConfigError, match="exactly one of uri"):
        load_lab_config(path)
    path.write_text(bare.replace("retries = 1", 'retries = 1\nexecutor = "dask://s:8786"\nworker_wait_s = 5'))
    cfg = load_lab_config(path)
    assert cfg.devices[0].uri == "" and cfg.worker_wait_s == 5.0


def test_worker_device_flags():
    assert HeldDevice.parse("pixel7") == HeldDevice("pixel7")
    assert HeldDevice.parse("rpi4=grpc://10.0.0.7:50051,token_file=/etc/rpi4.token").token_file.name == "rpi4.token"
    assert HeldDevice.parse("p=adb://R58M").uri == "adb://R58M"
    assert resource("rpi4") == "device:rpi4"
    for bad, fragment in (("=grpc://x:1", "NAME"), ("a=http://x", "URI"), ("a=local:,token=x", "unknown option")):
        with pytest.raises(ConfigError, match=fragment):
            HeldDevice.parse(bad)


def test_a_resumed_local_run_redoes_only_what_did_not_pass(tmp_path):
    path = write_lab(tmp_path / "lab.toml", [("a", "local:"), ("b", "grpc://gone:1")], INT8,
                     delegates=("xnnpack", "ref"), seeds=4, max_queries=30)
    cfg = load_lab_config(path)
    history = History(cfg.history)
    opened: list[str] = []

    def open_target(uri, token):
        opened.append(uri)
        if uri == "grpc://gone:1" and len(opened) < 4:
            from host.errors import TargetUnreachableError

            raise TargetUnreachableError(uri, "connection refused")
        return LocalTarget()

    first = LabRunner(cfg, history, open_target=open_target, sleep=lambda s: None).run()
    assert first.counts() == {"passed": 2, "skipped": 2}
    passed = {(c["device"], c["delegate"]): c["seconds"] for c in history.combos(first.run_id)
              if c["status"] == "passed"}
    opened.clear()
    opened.extend(["x"] * 3)  # b answers now
    second = LabRunner(cfg, history, open_target=open_target, sleep=lambda s: None).run(first.run_id)
    assert second.run_id == first.run_id and second.counts() == {"passed": 4}
    assert {d.name: d.status for d in second.devices} == {"a": "ok", "b": "ok"}  # a's from the history
    assert opened[3:] == ["grpc://gone:1"]  # a was not connected again: nothing of it was redone
    again = {(c["device"], c["delegate"]): c["seconds"] for c in history.combos(first.run_id)}
    assert all(again[k] == v for k, v in passed.items())
    assert len(history.combos(first.run_id)) == 4
    # triggering inputs of a passed combination, written on this host under the run's folder
    for c in history.combos(first.run_id):
        file = cfg.out / first.run_id / combo_folder(c["device"], c["model"], c["delegate"]) / TRIGGERING_FILE
        assert file.exists() == bool(c["triggered"])
        if c["triggered"]:
            with np.load(file) as data:
                assert len(data["x"]) == len(data["seed_index"]) >= c["triggered"] - (c["flaky"] or 0) > 0
    history.close()


def test_combo_folder_is_safe_for_external_delegates():
    assert combo_folder("rpi4", "m", "external:/usr/lib/libx.so") == "rpi4/m/external__usr_lib_libx.so"
