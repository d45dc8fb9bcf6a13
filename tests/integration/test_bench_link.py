"""scripts/bench_link.py end to end: a real namespace, veth pair, tbf and agents; nothing left behind.

Needs root and iproute2 (``ip``, ``tc``); skipped, saying which is missing, otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.script_support import SCRIPTS, load_script

bench = load_script("bench_link")


def _cannot_make_namespaces() -> str | None:
    """Why this machine cannot make a network namespace (root, iproute2, kernel, container), or None."""
    missing = bench.missing_prerequisites()
    if missing:
        return missing
    probe = f"{bench.NAME_PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_missing = _cannot_make_namespaces()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"cannot emulate a link: {_missing}")

TINY = ["--sizes", "32", "--seeds", "3", "--rates", "40", "--max-queries", "200"]


def leftovers(pid: int) -> list[str]:
    """The namespace and veth names of ``pid``'s run that still exist."""
    netns, host_dev, ns_dev = bench.link_names(pid)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found = [netns for line in namespaces.splitlines() if line.split() and line.split()[0] == netns]
    found += [dev for dev in (host_dev, ns_dev) if f" {dev}@" in links or f" {dev}:" in links]
    return found


@pytest.mark.timeout(120)
def test_tiny_run_prints_rows_with_bytes_and_removes_the_link(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main([*TINY, "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["link"] for r in rows] == ["loopback", "40 Mbit/s"]
    loopback, limited = rows
    for row in rows:
        assert row["size"] == "32x32x3" and row["seeds"] == 3 and row["candidates"] > 0
        assert row["payload_sent_per_candidate"] > 0 and row["payload_received_per_candidate"] > 0
    # the link row read the veth's counters: at least the payload crossed it, headers included
    assert limited["wire_sent_bytes"] >= limited["payload_sent_bytes"] > 0
    assert limited["wire_received_bytes"] >= limited["payload_received_bytes"] > 0
    assert loopback["wire_sent_bytes"] is None and loopback["transfer_share"] is None
    assert limited["transfer_share"] is not None and limited["wire_share"] > 0
    assert limited["tbf_drops"] >= 0 and loopback["tbf_drops"] is None
    assert limited["same_candidates_as_loopback"]  # same seeds, budget and rng seed: the same search
    printed = capsys.readouterr().out
    assert "| 32x32x3 | 40 Mbit/s |" in printed and "load average" in printed.lower()
    assert leftovers(os.getpid()) == []


@pytest.mark.timeout(120)
def test_a_failing_run_still_removes_the_link_and_stops_the_agents(monkeypatch):
    started = []
    real_start = bench.start_agent

    def recording_start(*args, **kwargs):
        started.append(real_start(*args, **kwargs))
        return started[-1]

    def boom(*args, **kwargs):
        assert leftovers(os.getpid()) != []  # the link exists while measuring
        raise RuntimeError("measurement failed")

    monkeypatch.setattr(bench, "start_agent", recording_start)
    monkeypatch.setattr(bench, "measure_size", boom)
    with pytest.raises(RuntimeError, match="measurement failed"):
        bench.main(TINY)
    assert len(started) == 2 and all(agent.process.poll() is not None for agent in started)
    assert leftovers(os.getpid()) == []


#: A run long enough to be interrupted: 20 seeds at 10 Mbit/s, three rounds.
_LONG_RUN = ["--sizes", "32", "--seeds", "20", "--rates", "10", "--max-queries", "5000", "--repeat", "3"]


def _terminate_once_the_agent_runs(process: subprocess.Popen, settle_s: float = 0.0) -> tuple[str, list[str]]:
    """Wait for the script's link and for the agent in its namespace, SIGTERM it after ``settle_s``,
    and return its stderr and the pids that were in the namespace (killed if it outlives 60 s)."""
    try:
        deadline = time.monotonic() + 60
        for line in process.stdout:
            if line.startswith("Link:"):
                break
            assert time.monotonic() < deadline, "the script never reported its link"
        assert leftovers(process.pid) != []
        netns = bench.link_names(process.pid)[0]
        agent_pids: list[str] = []
        while not agent_pids:  # the agent inside the namespace is running
            assert time.monotonic() < deadline and process.poll() is None, "no agent in the namespace"
            agent_pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            time.sleep(0.05)
        time.sleep(settle_s)
        process.terminate()
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return err, agent_pids


def _nothing_left(process: subprocess.Popen, agent_pids: list[str]) -> None:
    assert leftovers(process.pid) == []
    for pid in agent_pids:  # the agent (and its workers) went with the namespace
        assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.timeout(120)
def test_sigterm_mid_run_removes_the_link():
    process = subprocess.Popen([sys.executable, "-u", str(SCRIPTS / "bench_link.py"), *_LONG_RUN],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err, agent_pids = _terminate_once_the_agent_runs(process, settle_s=1.0)  # into start-up or the first campaign
    assert process.returncode == 130, err
    assert "interrupted" in err
    _nothing_left(process, agent_pids)


#: Runs bench_link.main with a teardown that never ends (every agent's stop() hangs) and a 2 s grace.
_STALLING_DRIVER = """
import sys, time
sys.path.insert(0, {scripts!r})
import bench_link
from host.deploy.loopback import AgentProcess
bench_link.FORCED_TEARDOWN_AFTER_S = 2.0
AgentProcess.stop = lambda self, *args, **kwargs: time.sleep(3600)
sys.exit(bench_link.main({argv!r}))
"""


@pytest.mark.timeout(120)
def test_sigterm_with_a_stalled_teardown_forces_it():
    """When the orderly unwinding hangs (an interrupted gRPC call can leave Channel.close waiting), the
    watcher thread kills what runs in the namespace, removes the link and exits with 130."""
    driver = _STALLING_DRIVER.format(scripts=str(SCRIPTS), argv=_LONG_RUN)
    process = subprocess.Popen([sys.executable, "-u", "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=str(SCRIPTS.parent))
    err, agent_pids = _terminate_once_the_agent_runs(process)
    assert process.returncode == 130, err
    assert "did not finish in 2 s, forcing it" in err
    assert "Stacks of every thread" in err and "Thread" in err  # where it hung, for whoever reads the log
    _nothing_left(process, agent_pids)
