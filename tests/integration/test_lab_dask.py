"""A lab across hosts, for real: a Dask scheduler, three `dflare lab worker` processes each playing a lab host
with its own loopback agents, and the history in a throwaway PostgreSQL cluster.

- every combination lands in PostgreSQL, each run by the worker holding its device, artifacts back in `out`;
- the same lab file without `executor` gives the same history (up to timings and the worker column);
- a resumed run redoes nothing;
- SIGKILL of a worker mid-run: its own device's combinations end failed/skipped, those of a device another
  worker also holds finish there, the others complete; no duplicate, no half-written row.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from host.cli import main
from host.lab import History, LabRunner, load_lab_config
from host.lab.runner import TRIGGERING_FILE, combo_folder
from tests.agent_support import start_agent
from tests.lab_support import FLOAT, INT8, DaskCluster, postgres_cluster, write_lab
from tests.lab_support import SEEDS as SEED_FILE

pytestmark = pytest.mark.slow

#: Seeds and queries per combination: a real search through the agents, a few seconds per run here.
SEEDS = 8
MAX_QUERIES = 40
#: Worker layout: w1 and w2 both hold m (a device reachable from two hosts), a, b and c are each on one.
LAYOUT = {"w1": ("a", "m"), "w2": ("b", "m"), "w3": ("c",)}
#: Timing fields: they differ between any two runs.
TIMINGS = {"seconds", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms"}
#: The agents' live readings in a device's info: they differ between any two looks.
READINGS = {"memory_available_bytes", "cache_used_bytes"}


@pytest.fixture(scope="module")
def lab_cluster(tmp_path_factory):
    pg = postgres_cluster()  # skips without PostgreSQL, before any process is started
    folder = tmp_path_factory.mktemp("lab-cluster")
    agents, contexts = {}, []
    cluster = DaskCluster(folder / "logs")
    try:
        for name in ("a", "b", "c", "m"):
            context = start_agent(folder / f"agent-{name}")
            agents[name] = context.__enter__()
            contexts.append(context)
        for worker, devices in LAYOUT.items():
            cluster.start_worker(worker, [f"{d}={agents[d].uri},token_file={agents[d].token_file}" for d in devices])
        cluster.wait_for(list(LAYOUT))
        yield cluster, agents, pg
    finally:
        cluster.stop()
        for context in reversed(contexts):
            context.__exit__(None, None, None)


def _lab(path, agents, devices, history: str, executor: str | None, models: int = 1, wait_s: float = 3.0):
    extra = ""
    if models > 1:  # the same pair again under another name: more combinations per device
        extra = "\n".join(f'[[model]]\nname = "digits28-{i}"\noriginal = "{FLOAT}"\ncompressed = "{INT8}"\n'
                          f'seeds = "{SEED_FILE}"\n' for i in range(2, models + 1))
    write_lab(path, [(d, agents[d].uri) for d in devices], INT8, delegates=("xnnpack", "ref"), seeds=SEEDS,
              max_queries=MAX_QUERIES, extra=extra)
    text = path.read_text().replace('history = "history.sqlite"', f'history = "{history}"')
    lab = [f"worker_wait_s = {wait_s}"] + ([f'executor = "dask://{executor[len("tcp://"):]}"'] if executor else [])
    text = text.replace("[budget]", "\n".join(lab) + "\n\n[budget]", 1)
    for d in devices:
        text = text.replace(f'name = "{d}"\n', f'name = "{d}"\ntoken_file = "{agents[d].token_file}"\n', 1)
    path.write_text(text)
    return path


def _content(history: History, run_id: str):
    combos = [{k: v for k, v in c.items() if k not in TIMINGS | {"run_id", "worker"}} for c in history.combos(run_id)]
    seeds = [{k: v for k, v in s.items() if k != "run_id"} for s in history.seeds(run_id)]
    devices = [{**{k: v for k, v in d.items() if k not in ("run_id", "worker")},
                "info_json": {k: v for k, v in json.loads(d["info_json"]).items() if k not in READINGS}}
               for d in history.devices(run_id)]
    return combos, seeds, devices


def test_a_lab_across_three_workers_lands_in_postgres_like_a_local_run(lab_cluster, tmp_path, capsys):
    cluster, agents, pg = lab_cluster
    url = pg.database()
    path = _lab(tmp_path / "lab.toml", agents, ["a", "b", "c"], url, cluster.address)
    assert main(["lab", "run", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    run_id = summary["run_id"]
    history = History(url)
    combos = history.combos(run_id)
    owner = {d: w for w, devices in LAYOUT.items() for d in devices if d != "m"}
    assert [(c["device"], c["delegate"], c["status"], c["worker"]) for c in combos] == [
        (d, delegate, "passed", owner[d]) for d in ("a", "b", "c") for delegate in ("ref", "xnnpack")]
    assert {d["device"]: (d["status"], d["worker"]) for d in history.devices(run_id)} == {
        d: ("ok", owner[d]) for d in ("a", "b", "c")}
    assert len(history.seeds(run_id)) == 6 * SEEDS
    # Artifacts came back to this host's out folder: summary, JUnit, each combination's triggering inputs.
    out = tmp_path / "runs" / run_id
    assert (out / "summary.json").exists() and (out / "junit.xml").exists()
    for c in combos:
        triggered = [s["seed_index"] for s in history.seeds(run_id)
                     if (s["device"], s["delegate"]) == (c["device"], c["delegate"]) and s["status"] == "triggered"]
        file = out / combo_folder(c["device"], c["model"], c["delegate"]) / TRIGGERING_FILE
        assert file.exists() == bool(triggered)
        if triggered:
            with np.load(file) as data:
                assert list(data["seed_index"]) == triggered and data["x"].shape[1:] == (28, 28, 1)
    assert any(c["triggered"] for c in combos)

    # The same lab file without executor: this host's threads, the same history contents.
    local = tmp_path / "local.toml"
    local.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("executor")))
    local_run = LabRunner(load_lab_config(local), history).run()
    assert {c["worker"] for c in history.combos(local_run.run_id)} == {None}
    assert _content(history, local_run.run_id) == _content(history, run_id)

    # Resuming the finished run redoes nothing: the rows are those of the first pass, timings included.
    before = history.combos(run_id)
    assert main(["lab", "run", str(path), "--resume", run_id[:20], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == run_id
    assert history.combos(run_id) == before
    history.close()


def test_sigkill_of_a_worker_mid_run(lab_cluster, tmp_path):
    cluster, agents, pg = lab_cluster
    url = pg.database()
    path = _lab(tmp_path / "lab.toml", agents, ["a", "b", "c", "m"], url, cluster.address, models=2)
    cfg = load_lab_config(path)
    killed: list[str] = []
    started_on: dict[tuple[str, str], list[str]] = {}

    def on_event(event):
        if event.kind != "combo_started":
            return
        worker = event.message.rsplit("on ", 1)[-1].rstrip(")")
        started_on.setdefault((event.model, event.delegate), []).append(worker)
        # Kill the worker that starts m's second combination: a host losing power mid-combination.
        if event.device == "m" and event.model == "digits28" and event.delegate == "ref" and not killed:
            killed.append(worker)
            threading.Thread(target=cluster.kill, args=(worker,)).start()

    history = History(url)
    result = LabRunner(cfg, history, on_event=on_event).run()
    assert killed, "m's second combination never started"
    victim = killed[0]
    survivor = "w2" if victim == "w1" else "w1"
    only_on_victim = "a" if victim == "w1" else "b"
    rows = {(c["device"], c["model"], c["delegate"]): c for c in history.combos(result.run_id)}
    assert len(rows) == 4 * 2 * 2 == len(history.combos(result.run_id))  # every combination, once
    order = [(m.name, d) for m in cfg.models for d in cfg.delegates]  # the lab file's: a device's run order
    by_device = {d: [rows[(d, *k)] for k in order] for d in ("a", "b", "c", "m")}
    # The other devices completed; c on w3, the survivor's own device on the survivor.
    for d in ("a", "b", "c"):
        if d != only_on_victim:
            assert {r["status"] for r in by_device[d]} == {"passed"}, \
                [(r["model"], r["delegate"], r["status"], r["worker"], r["error"]) for r in by_device[d]]
    # m was on both: the combination running on the victim finished on the survivor, as did the rest.
    assert {r["status"] for r in by_device["m"]} == {"passed"}
    assert rows[("m", "digits28", "ref")]["worker"] == survivor
    assert victim in started_on[("digits28", "ref")]
    # The victim's own device: what finished before stays passed, the rest failed (running) or skipped.
    statuses = [r["status"] for r in by_device[only_on_victim]]
    assert "passed" not in statuses[statuses.index(next(s for s in statuses if s != "passed")):]
    assert set(statuses) - {"passed"} and set(statuses) <= {"passed", "failed", "skipped"}
    assert statuses.count("failed") <= 1
    for r in by_device[only_on_victim]:
        if r["status"] != "passed":
            assert f"worker {victim} holding device {only_on_victim} left the Dask cluster" in r["error"]
    devices = {d["device"]: d for d in history.devices(result.run_id)}
    assert devices[only_on_victim]["status"] == "failed" and "left the Dask cluster" in devices[only_on_victim]["error"]
    # No half-written row: every passed combination has all its seeds, the others none.
    seeds = history.seeds(result.run_id)
    for key, row in rows.items():
        n = sum(1 for s in seeds if (s["device"], s["model"], s["delegate"]) == key)
        assert n == (SEEDS if row["status"] == "passed" else 0), key
    assert history.run(result.run_id)["status"] == "finished"
    history.close()


def test_a_model_pair_the_cluster_lost_is_scattered_again(lab_cluster, tmp_path, monkeypatch):
    """The last copy of a scattered pair can die with its worker (Dask's memory manager drops spare
    copies): the combination that needs it is sent again with the pair scattered anew, not failed.
    Here the copies are dropped by cancelling them: once before a combination is sent (the executor
    notices), once just after (the scheduler cancels the task)."""
    import host.lab.dask_executor as dask_executor

    cluster, agents, pg = lab_cluster
    path = _lab(tmp_path / "lab.toml", agents, ["c"], pg.database(), cluster.address, models=2)
    dropped: list[str] = []

    class LosingPairs(dask_executor.DaskExecutor):
        def _submit_next(self, chain):
            todo = list(chain.todo)
            if todo and todo[0][0].name == "digits28-2" and todo[0][1] == "xnnpack" and not dropped:
                dropped.append("before")
                self.client.cancel([self._scattered["digits28-2"]])
            super()._submit_next(chain)
            if todo and todo[0][0].name == "digits28-2" and todo[0][1] == "ref" and len(dropped) == 1:
                dropped.append("after")
                self.client.cancel([self._scattered["digits28-2"]])

    monkeypatch.setattr(dask_executor, "DaskExecutor", LosingPairs)
    history = History(pg.database())
    result = LabRunner(load_lab_config(path), history).run()
    assert dropped == ["before", "after"]
    rows = history.combos(result.run_id)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"passed"}, \
        [(r["model"], r["delegate"], r["status"], r["worker"], r["error"]) for r in rows]
    history.close()


def test_an_unreachable_scheduler_is_exit_code_3_naming_it(tmp_path, capsys):
    pytest.importorskip("distributed")
    path = write_lab(tmp_path / "lab.toml", [("a", "local:")], INT8, max_queries=0)
    path.write_text(path.read_text().replace("connect_timeout_s = 2.0", 'connect_timeout_s = 1.0\n'
                                             'executor = "dask://127.0.0.1:1"'))
    assert main(["lab", "run", str(path)]) == 3
    assert "Dask scheduler tcp://127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "history.sqlite").exists() or not History(str(tmp_path / "history.sqlite")).runs()
    assert main(["lab", "worker", "--scheduler", "tcp://127.0.0.1:1", "--device", "a=local:",
                 "--connect-timeout-s", "1"]) == 3
    assert "Dask scheduler tcp://127.0.0.1:1" in capsys.readouterr().err


def test_a_scheduler_lost_mid_run_is_exit_code_3_and_the_run_resumes_elsewhere(tmp_path, capsys, monkeypatch):
    cluster = DaskCluster(tmp_path / "logs")
    try:
        cluster.start_worker("w1", ["a=local:"])
        cluster.wait_for(["w1"])
        # A device no worker advertises (a host that is down, a typo) is given up after worker_wait_s.
        ghost = write_lab(tmp_path / "ghost.toml", [("ghost", "local:")], INT8, max_queries=0)
        ghost.write_text(ghost.read_text().replace('uri = "local:"\n', "").replace(
            "retries = 1", f'retries = 1\nworker_wait_s = 1\nhistory = "ghost.sqlite"\n'
                           f'executor = "dask://127.0.0.1:{cluster.port}"').replace('history = "history.sqlite"\n', ""))
        assert main(["lab", "run", str(ghost), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["counts"] == {"skipped": 1}
        assert summary["devices"][0]["status"] == "failed"
        assert "no worker of the Dask cluster" in summary["devices"][0]["error"]
        assert "--device ghost=URI" in summary["devices"][0]["error"]
        path = write_lab(tmp_path / "lab.toml", [("a", "local:")], INT8, delegates=("xnnpack", "ref", "cpu"),
                         seeds=SEEDS, max_queries=MAX_QUERIES)
        path.write_text(path.read_text().replace("retries = 1", f'retries = 1\nworker_wait_s = 3\n'
                                                 f'executor = "dask://127.0.0.1:{cluster.port}"'))
        import host.commands.lab as lab_command

        def print_event(event):
            if event.kind == "combo_passed":  # the first combination is stored: the scheduler goes away
                cluster.scheduler.kill()

        monkeypatch.setattr(lab_command, "_print_event", print_event)
        assert main(["lab", "run", str(path)]) == 3
        err = capsys.readouterr().err
        assert f"Dask scheduler {cluster.address}: lost during run" in err and "--resume" in err
        assert cluster.workers["w1"].wait(30) == 3  # the worker stops too, exit 3 (a service manager restarts it)
    finally:
        cluster.stop()
    history = History(str(tmp_path / "history.sqlite"))
    (run,) = history.runs()
    assert run["status"] == "interrupted"
    done = history.combos(run["run_id"])
    assert [c["status"] for c in done] == ["passed"]
    history.close()
    # Resumed without the executor (this host's threads): only the rest runs.
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("executor")))
    assert main(["lab", "run", str(path), "--resume", run["run_id"]]) == 0
    history = History(str(tmp_path / "history.sqlite"))
    combos = history.combos(run["run_id"])
    assert [c["status"] for c in combos] == ["passed"] * 3
    assert [c for c in combos if c["delegate"] == done[0]["delegate"]] == done
    assert history.run(run["run_id"])["status"] == "finished"
    history.close()
