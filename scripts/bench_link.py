#!/usr/bin/env python3
"""DFlare campaigns through the device agent behind a rate-limited link, against loopback.

    sudo python scripts/bench_link.py [--sizes 32 224] [--rates 40 10] [--seeds 20] [--max-queries 1000]
        [--repeat 1] [--json-out FILE]

A phone's agent is reached over adb: a USB 2 forward carries about 40 Mbit/s, adb over Wi-Fi about
10 Mbit/s. This script emulates such a link on one machine. It makes a network namespace and a veth
pair of its own (names carry this process's pid), gives the two ends the addresses of a private /30
used nowhere else, shapes both directions with ``tc qdisc ... tbf`` (the kernel here has no netem,
so no delay is added: only the rate is limited), and starts ``dflare-agent serve`` inside the
namespace (``ip netns exec``) bound to the namespace's address. The campaign runs in this process,
as ``dflare run --target grpc://...`` does: the original model in process, the compressed model on
the agent, so every candidate image crosses the link once and its probabilities come back. The
same campaign also runs against an agent on 127.0.0.1 (loopback, no limit), the reference.

Rows, per image size and link: seeds, triggered, candidates, candidates per trigger, wall-clock of
the campaign, per trigger and per candidate, bytes per candidate (payload: the uint8 images sent
and the output tensors received, counted at the session; wire: the host veth's tx/rx byte counters,
headers and gRPC framing included) and the share of the wall-clock spent on transfer, estimated
two ways: (link wall - loopback wall) / link wall, and wire bytes / rate / link wall.

Everything the script made (agent, namespace, veth pair) is removed in a ``finally``, also on
Ctrl-C or SIGTERM and when a run fails; if that teardown stalls for 30 s after a signal, a watcher
thread prints every thread's stack and does it by force (``TerminationGuard``). It needs root and
iproute2 (``ip``, ``tc``); without them it says so and exits with code 2. The 224x224x3 rows need
TensorFlow (the ``repair`` extra) to build their model (the same small random-weight CNN as
``bench_mutations.py --search``); without it they are skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_search import machine  # noqa: E402

from host.deploy.loopback import AgentProcess, launch_agent  # noqa: E402

#: A USB 2 adb forward (about 5 MB/s measured here through tbf at 40 Mbit/s) and adb over Wi-Fi.
DEFAULT_RATES_MBIT = (40.0, 10.0)
#: The fixture pair's size, and the usual mobile classifier input.
SIZES = (32, 224)
#: The fixture pair for 32x32x3 (original float32, compressed int8).
FIXTURE_MODEL = "digits32rgb"
FIXTURE_VARIANT = "int8"
#: /30 subnets are picked in here, one per run, derived from the pid; 10.254/16 is private (RFC 1918)
#: and, checked against the routing table before use, not routed anywhere else on this machine.
SUBNET_POOL = ipaddress.ip_network("10.254.0.0/16")
#: Names of what a run creates; the pid makes them unique per process (interface names <= 15 chars).
NAME_PREFIX = "dfl"
#: tbf's bucket holds this much of the rate (ms), at least MIN_BURST_BYTES (two full 1514-byte frames and
#: then some; tc-tbf(8) asks for at least rate / HZ and one MTU). A real USB or Wi-Fi link has no bucket:
#: with a large one, a step's batch of small images (about 28 KB at 32x32x3) would pass at memory speed
#: after each idle spell, so the bucket is kept small (measured here: 5.2 MB/s at 40 Mbit/s, 1.25 MB/s at
#: 10 Mbit/s in bulk, as with a 64 KB bucket). tbf splits a larger GSO packet itself.
BURST_MS = 1.0
MIN_BURST_BYTES = 4096
#: tbf's queue: packets waiting longer than this are dropped (tc-tbf(8) ``latency``). adb links push
#: back rather than drop, so the queue is long: with 100 ms a bulk 8 MB transfer at 10 Mbit/s lost 74
#: packets here, with 1000 ms none. Each row reports the qdiscs' drops.
TBF_LATENCY_MS = 1000
#: One Infer call of a 224x224x3 step at 10 Mbit/s: tens of images of 150 KB, a few seconds each way.
RPC_TIMEOUT_S = 300.0
LOOPBACK = "loopback"
#: Seeds run once through every session before the first timed campaign (first-call costs).
WARM_UP_IMAGES = 4
#: After SIGTERM, the orderly teardown (agents stopped, link removed) gets this long before it is forced.
FORCED_TEARDOWN_AFTER_S = 30.0

class LinkError(Exception):
    """The rate-limited link could not be set up (no root, no iproute2, a command failed)."""


# -- pure helpers ---------------------------------------------------------------------------


def transfer_share(link_wall_s: float | None, loopback_wall_s: float | None) -> float | None:
    """The share of a link run's wall-clock spent on transfer: (link - loopback) / link.

    The two runs are the same campaign (same seeds, budget, rng seed: the same candidates), so what
    the link run spends beyond the loopback run is the link's. Negative when noise makes the link
    run faster; None without both figures.
    """
    if link_wall_s is None or loopback_wall_s is None or link_wall_s <= 0:
        return None
    return (link_wall_s - loopback_wall_s) / link_wall_s


def wire_share(wire_bytes: int | None, rate_mbit: float | None, wall_s: float | None) -> float | None:
    """The share of ``wall_s`` the link needs just to carry ``wire_bytes`` at ``rate_mbit``, or None."""
    if not wire_bytes or not rate_mbit or not wall_s:
        return None
    return wire_bytes * 8 / (rate_mbit * 1e6) / wall_s


def per(value: float | None, count: float) -> float | None:
    """``value / count``, or None when there is nothing to divide by."""
    return None if value is None or not count else value / count


def tbf_args(rate_mbit: float) -> list[str]:
    """The ``tbf`` part of a ``tc qdisc`` command limiting a device to ``rate_mbit`` Mbit/s (tc-tbf(8))."""
    if rate_mbit <= 0:
        raise ValueError(f"the rate must be positive, got {rate_mbit}")
    rate_bits = int(rate_mbit * 1e6)
    burst_bytes = max(MIN_BURST_BYTES, int(rate_bits / 8 * BURST_MS / 1000))
    return ["tbf", "rate", f"{rate_bits}bit", "burst", f"{burst_bytes}b", "latency", f"{TBF_LATENCY_MS}ms"]


def link_names(pid: int) -> tuple[str, str, str]:
    """(namespace, host-side veth, namespace-side veth) of the run of process ``pid``."""
    return f"{NAME_PREFIX}{pid}-link", f"{NAME_PREFIX}{pid}h", f"{NAME_PREFIX}{pid}n"


def pick_subnet(pid: int, taken: Sequence[ipaddress.IPv4Network] = ()) -> ipaddress.IPv4Network:
    """A /30 of :data:`SUBNET_POOL` derived from ``pid`` that overlaps none of ``taken``.

    Raises:
        LinkError: every /30 of the pool overlaps (cannot happen on a sane machine).
    """
    count = SUBNET_POOL.num_addresses // 4
    for step in range(count):
        index = (pid + step) % count
        subnet = ipaddress.ip_network(f"{SUBNET_POOL.network_address + 4 * index}/30")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise LinkError(f"no free /30 in {SUBNET_POOL}")


def validate_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    if args.seeds < 1:
        return "--seeds must be at least 1"
    if args.max_queries < 2:
        return "--max-queries must be at least 2 (one candidate is two queries)"
    if args.repeat < 1:
        return "--repeat must be at least 1"
    if not args.rates:
        return "--rates needs at least one rate"
    if any(r <= 0 for r in args.rates):
        return "--rates must be positive (Mbit/s); loopback without limit is always measured"
    if len(set(args.rates)) != len(args.rates):
        return "--rates has a rate twice"
    if any(s not in SIZES for s in args.sizes):
        return f"--sizes must be among {', '.join(map(str, SIZES))}"
    return None


def missing_prerequisites() -> str | None:
    """Why this machine cannot make the link (not root, no ``ip`` or ``tc``), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "making a network namespace and shaping it with tc needs root (run it with sudo)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: install iproute2"
    return None


# -- the link -------------------------------------------------------------------------------


def _run(*command: str, netns: str | None = None) -> str:
    full = ["ip", "netns", "exec", netns, *command] if netns else list(command)
    done = subprocess.run(full, capture_output=True, text=True)
    if done.returncode != 0:
        raise LinkError(f"`{' '.join(full)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _routed_networks() -> list[ipaddress.IPv4Network]:
    networks = []
    for line in _run("ip", "-4", "route", "show", "table", "all").splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unicast") and len(line.split()) > 1:
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            if word != "default":
                networks.append(ipaddress.ip_network(word, strict=False))
    for line in _run("ip", "-4", "-o", "addr", "show").splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            networks.append(ipaddress.ip_interface(match.group(1)).network)
    return networks


@dataclass
class Link:
    """A veth pair into a namespace of its own, shaped with tbf in both directions."""

    netns: str
    host_dev: str
    ns_dev: str
    subnet: ipaddress.IPv4Network
    rate_mbit: float | None = None
    created: list[str] = field(default_factory=list)

    @property
    def host_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def ns_ip(self) -> str:
        return str(self.subnet.network_address + 2)

    @classmethod
    def create(cls, pid: int | None = None) -> Link:
        """Make the namespace and the veth pair, addresses up, no limit yet.

        Raises:
            LinkError: a command failed (what was made so far is removed).
        """
        pid = os.getpid() if pid is None else pid
        netns, host_dev, ns_dev = link_names(pid)
        link = cls(netns, host_dev, ns_dev, pick_subnet(pid, _routed_networks()))
        try:
            _run("ip", "netns", "add", netns)
            link.created.append("netns")
            _run("ip", "link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
            link.created.append("veth")
            _run("ip", "link", "set", ns_dev, "netns", netns)
            _run("ip", "addr", "add", f"{link.host_ip}/30", "dev", host_dev)
            _run("ip", "link", "set", host_dev, "up")
            _run("ip", "addr", "add", f"{link.ns_ip}/30", "dev", ns_dev, netns=netns)
            _run("ip", "link", "set", ns_dev, "up", netns=netns)
            _run("ip", "link", "set", "lo", "up", netns=netns)
        except BaseException:
            link.remove()
            raise
        return link

    def set_rate(self, rate_mbit: float | None) -> None:
        """Limit both directions to ``rate_mbit`` Mbit/s (None: remove the limit)."""
        for dev, netns in ((self.host_dev, None), (self.ns_dev, self.netns)):
            if rate_mbit is None:
                if self.rate_mbit is not None:
                    _run("tc", "qdisc", "del", "dev", dev, "root", netns=netns)
            else:
                _run("tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(rate_mbit), netns=netns)
        self.rate_mbit = rate_mbit

    def counters(self) -> tuple[int, int]:
        """(bytes sent host -> namespace, bytes received namespace -> host) so far, at the host veth."""
        stats = Path("/sys/class/net") / self.host_dev / "statistics"
        return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())

    def drops(self) -> int:
        """Packets the two tbf qdiscs dropped so far (``tc -s qdisc show``), 0 without a limit."""
        total = 0
        for dev, netns in ((self.host_dev, None), (self.ns_dev, self.netns)):
            text = _run("tc", "-s", "qdisc", "show", "dev", dev, netns=netns)
            total += sum(int(n) for n in re.findall(r"dropped (\d+)", text))
        return total

    def remove(self) -> None:
        """Delete the veth pair and the namespace (deleting either end of a veth deletes both)."""
        if "veth" in self.created:
            subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True)
            subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "del", self.ns_dev], capture_output=True)
        if "netns" in self.created:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        self.created.clear()


# -- the agent ------------------------------------------------------------------------------


def start_agent(workdir: Path, host: str, netns: str | None = None) -> AgentProcess:
    """``dflare-agent serve`` on ``host`` (inside ``netns`` when given), with a token, a free port.

    Raises:
        RuntimeError: it exited or did not listen in time (with its log).
    """
    prefix = ["ip", "netns", "exec", netns] if netns else []  # exec's the agent: the pid is the agent's
    return launch_agent(workdir, host=host, prefix=prefix, log_level="WARNING")


class CountingSession:
    """A session (``host.targets.base.Session``) that counts the payload bytes of its ``infer`` calls.

    Sent: the uint8 images; received: the output tensors. Everything else is the wrapped session's.
    """

    def __init__(self, session) -> None:
        self.session = session
        self.sent_bytes = 0
        self.received_bytes = 0

    def infer(self, images: np.ndarray) -> np.ndarray:
        out = self.session.infer(images)
        self.sent_bytes += images.nbytes
        self.received_bytes += out.nbytes
        return out

    def infer_many(self, batches) -> list[np.ndarray]:
        outs = self.session.infer_many(batches)
        self.sent_bytes += sum(b.nbytes for b in batches)
        self.received_bytes += sum(o.nbytes for o in outs)
        return outs

    def close(self) -> None:
        self.session.close()

    @property
    def model(self):
        return self.session.model

    @property
    def input_spec(self):
        return self.session.input_spec

    @property
    def output_specs(self):
        return self.session.output_specs

    @property
    def delegated_nodes(self):
        return self.session.delegated_nodes

    @property
    def cpu_ops(self):
        return self.session.cpu_ops

    @property
    def last_invoke_ms(self):
        return self.session.last_invoke_ms

    @property
    def peak_memory_bytes(self):
        return self.session.peak_memory_bytes


# -- the campaign ---------------------------------------------------------------------------


@dataclass
class Workload:
    """One image size: the original in process, the compressed model's file, the seeds."""

    size: int
    original: object
    compressed_spec: object
    seeds: np.ndarray
    indices: np.ndarray
    model: str


def fixture_workload(n_seeds: int) -> Workload:
    from bench_pairs import FIXTURES, load_pair

    from host.targets import ModelSpec

    pair = load_pair(f"{FIXTURE_MODEL}/{FIXTURE_VARIANT}", n_seeds)
    spec = ModelSpec.from_path(FIXTURES / "models" / f"{FIXTURE_MODEL}-{FIXTURE_VARIANT}.tflite", delegate="xnnpack",
                               threads=1)
    return Workload(32, pair.original, spec, pair.seeds, pair.indices,
                    f"{FIXTURE_MODEL} float32 vs {FIXTURE_VARIANT} (fixtures)")


def cnn_workload(size: int, n_seeds: int, workdir: Path) -> Workload:
    """bench_mutations.py --search's model and seeds: a random-weight CNN, the digits32rgb seeds enlarged."""
    from bench_mutations import _cnn_pair

    from host.targets import LocalTarget, ModelSpec
    from host.targets.base import Preprocessing

    x = np.load(ROOT / "tests" / "fixtures" / "seeds" / f"{FIXTURE_MODEL}.npz")["x"]
    if len(x) < n_seeds:
        raise SystemExit(f"{size}x{size}x3: the {FIXTURE_MODEL} fixtures have {len(x)} seeds; asked for {n_seeds}")
    x = x[:n_seeds]
    factor = -(-size // x.shape[1])
    seeds = np.ascontiguousarray(np.repeat(np.repeat(x, factor, 1), factor, 2)[:, :size, :size, :])
    original_path, compressed_path = _cnn_pair(size, seeds, workdir)
    pre = Preprocessing(std=(255.0,))  # trained on nothing, fed 0..1 (as bench_mutations.py)
    original = LocalTarget().load(ModelSpec.from_path(original_path, delegate="xnnpack", threads=1,
                                                      preprocessing=pre))
    spec = ModelSpec.from_path(compressed_path, delegate="xnnpack", threads=1, preprocessing=pre)
    return Workload(size, original, spec, seeds, np.arange(len(seeds)),
                    "random-weight strided CNN float32 vs int8 (bench_mutations.py --search)")


def campaign(workload: Workload, compressed, max_queries: int, link: Link | None) -> dict:
    """The default DFlare search over the workload's seeds; figures of the run."""
    from host.search import Engine, SeedStatus, searcher_factory

    counting = CountingSession(compressed)
    engine = Engine(workload.original, counting, searcher_factory("dflare"), budget=max_queries, rng_seed=0)
    before, drops_before = (link.counters(), link.drops()) if link else (None, 0)
    start = time.perf_counter()
    results = [e.result for e in engine.run(workload.seeds, indices=workload.indices) if e.result is not None]
    wall_s = time.perf_counter() - start
    after, drops_after = (link.counters(), link.drops()) if link else (None, 0)
    searched = [r for r in results if r.status is not SeedStatus.skipped]
    return {"wall_s": wall_s, "seeds": len(searched), "skipped": len(results) - len(searched),
            "triggered": sum(r.status is SeedStatus.triggered for r in results),
            "candidates": engine.total_queries / 2, "steps": engine.batch_calls,
            "images_sent": counting.sent_bytes // int(np.prod(workload.seeds.shape[1:])),
            "payload_sent_bytes": counting.sent_bytes, "payload_received_bytes": counting.received_bytes,
            "wire_sent_bytes": after[0] - before[0] if link else None,
            "wire_received_bytes": after[1] - before[1] if link else None,
            "tbf_drops": drops_after - drops_before if link else None,
            "infer_s": float(engine.statistics.get("infer_s", 0.0))}


def finish_row(size: int, link_name: str, rate_mbit: float | None, runs: list[dict]) -> dict:
    run = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]  # the median round
    candidates, triggered = run["candidates"], run["triggered"]
    wire = None if run["wire_sent_bytes"] is None else run["wire_sent_bytes"] + run["wire_received_bytes"]
    return {"size": f"{size}x{size}x3", "link": link_name, "rate_mbit": rate_mbit, **run,
            "rounds_wall_s": [round(r["wall_s"], 3) for r in runs],
            "candidates_per_trigger": per(candidates, triggered),
            "wall_per_trigger_s": per(run["wall_s"], triggered), "wall_per_candidate_s": per(run["wall_s"], candidates),
            "payload_sent_per_candidate": per(run["payload_sent_bytes"], candidates),
            "payload_received_per_candidate": per(run["payload_received_bytes"], candidates),
            "wire_sent_per_candidate": per(run["wire_sent_bytes"], candidates),
            "wire_received_per_candidate": per(run["wire_received_bytes"], candidates),
            "wall_per_step_s": per(run["wall_s"], run["steps"]),
            "wire_share": wire_share(wire, rate_mbit, run["wall_s"])}


def measure_size(workload: Workload, args: argparse.Namespace, local_agent: AgentProcess, link_agent: AgentProcess,
                 link: Link) -> list[dict]:
    """Loopback, then each rate, ``args.repeat`` alternating rounds; one row per link."""
    from host.targets.remote import RemoteTarget

    links: list[tuple[str, float | None, AgentProcess]] = [(LOOPBACK, None, local_agent)]
    links += [(f"{rate:g} Mbit/s", rate, link_agent) for rate in args.rates]
    targets = {name: RemoteTarget(agent.uri, token=agent.token, rpc_timeout_s=RPC_TIMEOUT_S)
               for name, _, agent in links}
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in links}
    try:
        link.set_rate(None)  # the model upload is not what is measured
        sessions = {name: target.load(workload.compressed_spec) for name, target in targets.items()}
        warm_up = workload.seeds[:WARM_UP_IMAGES]
        workload.original.infer(warm_up)
        for session in sessions.values():  # first calls: the worker's delegate, the channel's buffers
            session.infer(warm_up)
        for _ in range(args.repeat):
            for name, rate, _agent in links:
                link.set_rate(rate)
                runs[name].append(campaign(workload, sessions[name], args.max_queries,
                                           None if rate is None else link))
    finally:
        link.set_rate(None)
        for target in targets.values():
            target.close()
    rows = [finish_row(workload.size, name, rate, runs[name]) for name, rate, _ in links]
    reference = rows[0]
    for row in rows:
        row["model"] = workload.model
        row["transfer_share"] = None if row is reference else transfer_share(row["wall_s"], reference["wall_s"])
        row["same_candidates_as_loopback"] = (row["candidates"], row["triggered"]) == (reference["candidates"],
                                                                                      reference["triggered"])
    return rows


# -- output ---------------------------------------------------------------------------------


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def table(rows: list[dict]) -> str:
    lines = ["| image | link | seeds | triggered | candidates | cand. / trigger | wall s | s / trigger | "
             "ms / candidate | ms / step | KB sent / cand. (payload, wire) | B recv / cand. (payload, wire) | "
             "images sent / cand. | transfer share (wall, bytes/rate) | tbf drops |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        same = "" if r["same_candidates_as_loopback"] else " (differs from loopback)"
        lines.append(
            f"| {r['size']} | {r['link']} | {r['seeds']} | {r['triggered']} | {r['candidates']:,.0f}{same} | "
            f"{_fmt(r['candidates_per_trigger'], '.0f')} | {r['wall_s']:.2f} | "
            f"{_fmt(r['wall_per_trigger_s'], '.2f')} | "
            f"{_fmt(r['wall_per_candidate_s'], '.2f', 1e3)} | {_fmt(r['wall_per_step_s'], '.1f', 1e3)} | "
            f"{_fmt(r['payload_sent_per_candidate'], '.1f', 1e-3)}, "
            f"{_fmt(r['wire_sent_per_candidate'], '.1f', 1e-3)} | "
            f"{_fmt(r['payload_received_per_candidate'], '.0f')}, {_fmt(r['wire_received_per_candidate'], '.0f')} | "
            f"{_fmt(per(r['images_sent'], r['candidates']), '.2f')} | "
            f"{_fmt(r['transfer_share'], '.0%')}, {_fmt(r['wire_share'], '.0%')} | {_fmt(r['tbf_drops'], '.0f')} |")
    return "\n".join(lines)


def conditions(args: argparse.Namespace) -> str:
    import ai_edge_litert
    import grpc

    versions = (f"numpy {np.__version__}, grpcio {grpc.__version__}, ai-edge-litert "
                f"{getattr(ai_edge_litert, '__version__', '?')}")
    rates = ", ".join(f"{r:g}" for r in args.rates)
    burst = ", ".join(" ".join(tbf_args(r)[3:]) for r in args.rates)
    return (f"Machine: {machine()}; {versions}. Links: loopback (no limit) and tbf at {rates} Mbit/s both ways "
            f"({burst}; no added delay). XNNPACK, 1 thread per model; original in process, compressed on the agent; "
            f"default DFlare, {args.seeds} seeds, {args.max_queries} queries per seed, rng seed 0; median of "
            f"{args.repeat} alternating round(s).")


class TerminationGuard:
    """SIGTERM unwinds like Ctrl-C; if the unwinding stalls, a watcher thread tears down by force.

    The handler raises KeyboardInterrupt in the main thread, so every ``finally`` runs (the agents
    stop, the link goes). The signal also wakes a watcher thread through ``signal.set_wakeup_fd``,
    which the C-level handler writes even while the main thread is stuck (Ctrl-C wakes it too): if the
    orderly path has not
    finished within ``grace_s`` (a gRPC call or ``Channel.close`` that never returns, as grpc/grpc#19973
    describes for interrupted calls), the watcher prints every thread's stack, kills what runs in the
    namespace and the agents, removes the link and exits with 130.
    """

    def __init__(self, grace_s: float | None = None) -> None:
        self.grace_s = FORCED_TEARDOWN_AFTER_S if grace_s is None else grace_s
        self.link: Link | None = None
        self.agents: list[AgentProcess] = []
        self.finished = threading.Event()
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd: int | None = None
        self._previous_handler = None

    def __enter__(self) -> TerminationGuard:
        try:
            self._previous_handler = signal.signal(signal.SIGTERM, self._raise_interrupt)
            self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread: leave signals alone
            self._previous_handler = None
            return self
        threading.Thread(target=self._watch, name="bench-link-teardown", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.finished.set()
        if self._previous_handler is not None:
            signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
            signal.signal(signal.SIGTERM, self._previous_handler)
        self._writer.close()  # wakes the watcher, which sees ``finished`` and returns

    @staticmethod
    def _raise_interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def _watch(self) -> None:
        while not self.finished.is_set():
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:  # the guard was closed
                return
            if {signal.SIGTERM, signal.SIGINT} & set(data) and not self.finished.wait(self.grace_s):
                self._force()

    def _force(self) -> None:
        print(f"bench_link: interrupted; the orderly teardown did not finish in {self.grace_s:g} s, forcing it. "
              "Stacks of every thread:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self.link is not None:
            pids = subprocess.run(["ip", "netns", "pids", self.link.netns], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for agent in self.agents:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGKILL)
        if self.link is not None:
            self.link.remove()
        print("bench_link: interrupted; removing the link (forced)", file=sys.stderr, flush=True)
        os._exit(130)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help="image sides: 32 (the digits32rgb fixtures), 224 (a TensorFlow-built CNN); default both")
    parser.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_RATES_MBIT),
                        help="link rates in Mbit/s, both directions (default 40 10); loopback is always measured")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per campaign (default 20)")
    parser.add_argument("--max-queries", type=int, default=1000, help="query budget per seed (default 1000)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds per link (median; default 1)")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the rows to FILE as JSON")
    args = parser.parse_args(argv)
    error = validate_args(args)
    if error:
        parser.error(error)
    reason = missing_prerequisites()
    if reason:
        print(f"bench_link: cannot emulate the link: {reason}", file=sys.stderr)
        return 2
    sizes = list(dict.fromkeys(args.sizes))
    if 224 in sizes:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            print("224x224x3 skipped: its model is built with TensorFlow, which is not installed "
                  "(pip install -e '.[repair]')")
            sizes.remove(224)
    print(conditions(args))
    if 224 in sizes:
        import tensorflow

        print(f"224x224x3 model built with TensorFlow {tensorflow.__version__}.")
    print(f"Load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    rows: list[dict] = []
    link = local_agent = link_agent = None
    with TerminationGuard() as guard, tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        try:
            link = guard.link = Link.create()
            print(f"Link: namespace {link.netns}, veth {link.host_dev} ({link.host_ip}) <-> {link.ns_dev} "
                  f"({link.ns_ip}/30).")
            local_agent = start_agent(Path(tmp) / "agent-loopback", "127.0.0.1")
            guard.agents.append(local_agent)
            link_agent = start_agent(Path(tmp) / "agent-link", link.ns_ip, netns=link.netns)
            guard.agents.append(link_agent)
            for size in sizes:
                workload = (fixture_workload(args.seeds) if size == 32
                            else cnn_workload(size, args.seeds, Path(tmp)))
                rows += measure_size(workload, args, local_agent, link_agent, link)
        except LinkError as exc:
            print(f"bench_link: the link could not be set up: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("bench_link: interrupted; removing the link", file=sys.stderr)
            return 130
        finally:
            for agent in (link_agent, local_agent):
                if agent is not None:
                    agent.stop()
            if link is not None:
                link.remove()
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))
    skipped = {r["size"]: r["skipped"] for r in rows if r["skipped"]}
    if skipped:
        print("Seeds the two models already disagree on are skipped (not in the seeds column): "
              + ", ".join(f"{size} {n}" for size, n in skipped.items()) + ".")
    for r in rows:
        if not r["same_candidates_as_loopback"]:
            print(f"Note: {r['size']} over {r['link']} consumed other candidates than loopback; compare with care.")
    print(f"\nLoad average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
