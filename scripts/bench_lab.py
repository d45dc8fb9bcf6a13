#!/usr/bin/env python3
"""Lab wall-clock: N devices (loopback agents) driven from one host vs from W Dask workers (issue 21).

Starts N real ``dflare-agent`` processes on loopback, each one "device", and one lab file over them
(the digits28 int8 pair on every delegate given, a small search per combination). Then, on the same
agents and the same history:

    1 host      ``dflare lab run`` without ``executor``: this process's threads, one per device
                (``max_parallel_devices`` = N, so no device waits for a thread)
    W workers   a Dask scheduler and W ``dflare lab worker`` processes, the devices dealt round-robin
                among them, ``executor = "dask://..."``; the cluster is started once, before the timed runs
                (a lab's scheduler and workers are long-running services)

Each is run ``--repeats`` times; the table gives the median and range of the lab run's wall-clock
(from reading the lab file to the last combination stored), the combinations, and the 1-minute load
average before and after (this machine is shared: loopback agents, workers and searches all compete
for the same cores, so the figures are the harness's overhead and parallelism here, not a lab's
speed-up from more hosts).

    python scripts/bench_lab.py                         # 6 devices, 3 workers, Markdown table
    python scripts/bench_lab.py --devices 9 --json
    python scripts/bench_lab.py --postgres              # history in a throwaway PostgreSQL cluster
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host.deploy.loopback import start_agent  # noqa: E402
from host.lab import History, LabRunner, load_lab_config  # noqa: E402
from tests.lab_support import INT8, DaskCluster, PostgresCluster, write_lab  # noqa: E402

#: Per combination: seeds searched and queries per seed. Small (a combination takes about a second
#: here) so that the harness's own costs show next to the work.
DEFAULT_SEEDS = 12
DEFAULT_MAX_QUERIES = 60


def _lab_file(folder: Path, agents: dict, delegates: tuple[str, ...], seeds: int, max_queries: int,
              history: str, executor: str | None) -> Path:
    path = write_lab(folder / ("lab-dask.toml" if executor else "lab-local.toml"),
                     [(name, a.uri) for name, a in agents.items()], INT8, delegates=delegates, seeds=seeds,
                     max_queries=max_queries)
    text = path.read_text().replace('history = "history.sqlite"', f'history = "{history}"')
    lab = [f"max_parallel_devices = {len(agents)}", "worker_wait_s = 30"]
    if executor:
        lab.append(f'executor = "dask://{executor[len("tcp://"):]}"')
    text = text.replace("[budget]", "\n".join(lab) + "\n\n[budget]", 1)
    for name, agent in agents.items():
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\ntoken_file = "{agent.token_file}"\n', 1)
    path.write_text(text)
    return path


def _timed_runs(path: Path, repeats: int) -> dict:
    config = load_lab_config(path)
    walls, counts, loads = [], None, []
    for _ in range(repeats):
        history = History(config.history)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        result = LabRunner(load_lab_config(path), history).run()
        walls.append(time.perf_counter() - start)
        loads.append((load_before, os.getloadavg()[0]))
        counts = result.counts()
        history.close()
    return {"wall_s": walls, "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "combos": sum(counts.values()), "counts": counts, "load_1min": loads}


def measure(devices: int, workers: int, delegates: tuple[str, ...], seeds: int, max_queries: int, repeats: int,
            postgres: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        pg = None
        if postgres:
            pg = PostgresCluster()
            stack.callback(pg.stop)
        history = pg.database() if pg else str(folder / "history.sqlite")
        agents = {f"d{i}": stack.enter_context(start_agent(folder / f"agent{i}")) for i in range(devices)}
        local = _timed_runs(_lab_file(folder, agents, delegates, seeds, max_queries, history, None), repeats)
        cluster = DaskCluster(folder / "dask")
        stack.callback(cluster.stop)
        start = time.perf_counter()
        names = [f"w{k + 1}" for k in range(workers)]
        for k, name in enumerate(names):
            held = [d for i, d in enumerate(agents) if i % workers == k]
            cluster.start_worker(name, [f"{d}={agents[d].uri},token_file={agents[d].token_file}" for d in held])
        cluster.wait_for(names)
        cluster_start_s = time.perf_counter() - start
        dask = _timed_runs(_lab_file(folder, agents, delegates, seeds, max_queries, history, cluster.address),
                           repeats)
        return {"devices": devices, "workers": workers, "delegates": list(delegates), "seeds": seeds,
                "max_queries": max_queries, "repeats": repeats, "cpus": os.cpu_count(),
                "history": "postgresql" if postgres else "sqlite", "cluster_start_s": cluster_start_s,
                "one_host": local, "dask": dask}


def _table(r: dict) -> str:
    def row(label: str, m: dict) -> str:
        loads = ", ".join(f"{a:.1f}->{b:.1f}" for a, b in m["load_1min"])
        return (f"| {label} | {m['combos']} | {m['median_s']:.1f} | {m['min_s']:.1f}-{m['max_s']:.1f} | "
                f"{m['median_s'] / m['combos']:.2f} | {loads} |")

    return "\n".join([
        f"{r['devices']} devices (loopback agents), delegates {', '.join(r['delegates'])}, {r['seeds']} seeds x "
        f"{r['max_queries']} queries per combination, history {r['history']}, {r['cpus']} CPUs, "
        f"{r['repeats']} runs each; cluster start {r['cluster_start_s']:.1f} s (not in the runs)",
        "",
        "| executor | combinations | median wall s | range s | s per combination | load 1-min before->after |",
        "|---|---|---|---|---|---|",
        row("1 host (threads)", r["one_host"]),
        row(f"{r['workers']} Dask workers", r["dask"]),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=6, help="loopback agents, one device each (default: 6)")
    parser.add_argument("--workers", type=int, default=3, help="dflare lab worker processes (default: 3)")
    parser.add_argument("--delegates", default="xnnpack,ref", help="comma-separated (default: xnnpack,ref)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--max-queries", type=int, default=DEFAULT_MAX_QUERIES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="history in a throwaway PostgreSQL cluster")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.devices, args.workers, tuple(args.delegates.split(",")), args.seeds, args.max_queries,
                     args.repeats, args.postgres)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
