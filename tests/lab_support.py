"""Helpers for the lab tests: lab files, and a compressed model with two classes swapped."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from device_agent.runtime import load_runtime

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FLOAT = FIXTURES / "models" / "digits28-float32.tflite"
INT8 = FIXTURES / "models" / "digits28-int8.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"


def swap_classes(model: Path, out: Path, a: int = 0, b: int = 1) -> Path:
    """Write a copy of ``model`` whose classifier layer has classes ``a`` and ``b`` swapped.

    The last layer's weight rows and bias entries (constant tensors whose first dimension is the
    class count) are found as byte strings in the flatbuffer and swapped in place: a deliberately
    changed compressed model that deviates from the original exactly where it predicts a or b.
    """
    content = bytearray(model.read_bytes())
    interp = load_runtime().module.Interpreter(model_content=bytes(content))
    interp.allocate_tensors()
    classes = int(interp.get_output_details()[0]["shape"][-1])
    swapped = 0
    for detail in interp.get_tensor_details():
        shape = tuple(detail["shape"])
        if not shape or shape[0] != classes or len(shape) > 2:
            continue
        try:
            tensor = interp.get_tensor(detail["index"])
        except ValueError:
            continue  # an activation, not a constant
        raw = tensor.tobytes()
        offset = bytes(content).find(raw)
        if offset < 0 or bytes(content).find(raw, offset + 1) >= 0:
            continue
        changed = tensor.copy()
        changed[[a, b]] = changed[[b, a]]
        content[offset : offset + len(raw)] = changed.tobytes()
        swapped += 1
    if swapped != 2:
        raise AssertionError(f"expected to swap the classifier's weights and bias, swapped {swapped} tensors")
    out.write_bytes(bytes(content))
    return out


def write_lab(path: Path, devices: list[tuple[str, str]], compressed: Path, *, delegates=("xnnpack",),
              seeds: int = 12, max_queries: int = 60, extra: str = "") -> Path:
    """Write a lab.toml with the digits28 pair, tiny budgets and fast retries."""
    lines = [
        "[lab]", 'name = "test-lab"', 'history = "history.sqlite"', 'out = "runs"',
        f"delegates = [{', '.join(repr(d).replace(chr(39), chr(34)) for d in delegates)}]",
        "retries = 1", "backoff_s = 0.05", "connect_timeout_s = 2.0", "",
        "[budget]", f"seeds = {seeds}", f"max_queries = {max_queries}", "latency_runs = 3", "batch_size = 4", "",
        "[regression]", "latency_ratio = 1000.0", "",  # latency on 2 shared cores is too noisy to gate here
    ]
    for name, uri in devices:
        lines += ["[[device]]", f'name = "{name}"', f'uri = "{uri}"', ""]
    lines += ["[[model]]", 'name = "digits28"', f'original = "{FLOAT}"', f'compressed = "{compressed}"',
              f'seeds = "{SEEDS}"', "", extra]
    path.write_text("\n".join(lines))
    return path


def seed_labels(model: Path, delegate: str, n: int) -> np.ndarray:
    """Top-1 labels of ``model`` on the first n fixture seeds, with the model's own preprocessing."""
    from device_agent.runtime import ModelRunner
    from host.targets import ModelSpec

    with np.load(SEEDS) as data:
        x = data["x"][:n]
    spec = ModelSpec.from_path(model)
    runner = ModelRunner(spec.content, delegate=delegate, preprocessing=spec.preprocessing)
    return runner.infer(x).argmax(1)


# -- a throwaway PostgreSQL server -----------------------------------------------------------------
#: Seconds to wait for a new cluster to accept connections (initdb + start take 2-4 s on 2 shared cores).
POSTGRES_START_TIMEOUT_S = 60


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (on PATH, else Debian's /usr/lib/postgresql/N/bin)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


class PostgresCluster:
    """A PostgreSQL server made by ``initdb`` in a temporary folder, on a free loopback port.

    PostgreSQL refuses to run as root, so under root the cluster belongs to (and runs as) the
    ``postgres`` user that Debian's package creates. Trust authentication on 127.0.0.1 only; fsync off
    (a test database: speed over durability). :meth:`database` makes a fresh database per test.
    """

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
        self.user = None
        self.root = Path(tempfile.mkdtemp(prefix="dflare-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
            self.user = "postgres"
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        data = self.root / "data"
        self._pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
        run = functools.partial(subprocess.run, check=True, capture_output=True, user=self.user,
                                timeout=POSTGRES_START_TIMEOUT_S)
        run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "lab", "--no-sync", "-E", "UTF8"])
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        run([*self._pg_ctl, "-o", options, "-l", str(self.root / "server.log"), "-w", "start"])
        self._run = run
        self.url = f"postgresql+psycopg://lab@127.0.0.1:{self.port}/postgres"
        self._count = 0

    def database(self, prefix: str = "lab") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._count += 1
        name = f"{prefix}_{self._count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=lab dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://lab@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:

        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run([*self._pg_ctl, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


_CLUSTER: PostgresCluster | None = None


def postgres_cluster() -> PostgresCluster:
    """One throwaway cluster per test process (started on first use, stopped at exit); skips the test when
    the server binaries, the driver or SQLAlchemy are missing (.ci/run installs all three)."""
    global _CLUSTER
    pytest.importorskip("sqlalchemy", reason="the lab extra (SQLAlchemy) is not installed: pip install -e '.[lab]'")
    pytest.importorskip("psycopg", reason="the lab extra (psycopg) is not installed: pip install -e '.[lab]'")
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    if _CLUSTER is None:
        _CLUSTER = PostgresCluster()
        atexit.register(_CLUSTER.stop)
    return _CLUSTER


# -- a Dask cluster of lab workers -------------------------------------------------------------------
#: Seconds to wait for the scheduler and the workers (each imports numpy, the runtime and Dask: ~3-6 s
#: on 2 shared cores, several starting at once).
DASK_START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """A Dask scheduler and ``dflare lab worker`` processes on loopback, each worker playing a lab host.

    Processes write their output to ``folder/NAME.log``; :meth:`stop` kills what is left.
    """

    def __init__(self, folder: Path) -> None:
        import sys

        pytest.importorskip("distributed", reason="the lab extra (Dask distributed) is not installed: "
                                                  "pip install -e '.[lab]'")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.python = sys.executable
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.workers: dict[str, subprocess.Popen] = {}
        self.scheduler = self._spawn("scheduler", [self.python, "-m", "distributed.cli.dask_scheduler", "--host",
                                                   "127.0.0.1", "--port", str(self.port), "--no-dashboard"])
        self._client = None

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        from tests.agent_support import ROOT

        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's life
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def client(self):
        from distributed import Client

        if self._client is None:
            self._client = Client(self.address, timeout=DASK_START_TIMEOUT_S, set_as_default=False)
        return self._client

    def start_worker(self, name: str, devices: list[str]) -> subprocess.Popen:
        """Start ``dflare lab worker --name NAME --device D ...`` (does not wait: see :meth:`wait_for`)."""
        command = [self.python, "-m", "host.cli", "lab", "worker", "--scheduler", self.address, "--name", name,
                   "--host", "127.0.0.1", "--connect-timeout-s", str(DASK_START_TIMEOUT_S)]
        for device in devices:
            command += ["--device", device]
        self.workers[name] = self._spawn(name, command)
        return self.workers[name]

    def wait_for(self, names: list[str]) -> None:
        """Wait until the scheduler lists every named worker."""
        import time

        deadline = time.monotonic() + DASK_START_TIMEOUT_S
        while True:
            seen = {w.get("name") for w in self.client().scheduler_info(n_workers=-1)["workers"].values()}
            if set(names) <= seen:
                return
            for name in names:
                if self.workers[name].poll() is not None:
                    raise AssertionError(f"worker {name} exited: {(self.folder / f'{name}.log').read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"workers {sorted(set(names) - seen)} did not join {self.address}")
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL a worker process (a lab host losing power)."""
        self.workers[name].kill()
        self.workers[name].wait(10)

    def stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        for proc in [*self.workers.values(), self.scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers.values(), self.scheduler]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
