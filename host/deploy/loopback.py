"""Start a real ``dflare-agent serve`` on this machine, on a free port: the one launcher of the demo,
the benchmarks and the tests.

    with start_agent(tmp_path) as agent:          # token on, --port 0, private cache dir
        uri, token = agent                        # or agent.uri / agent.token / agent.token_file
        target = RemoteTarget(uri, token=token)

Extra ``serve`` flags go after the work directory (``start_agent(tmp, "--max-message-bytes", "1M")``);
``env`` adds environment variables (``{"DFLARE_AGENT_FAULT_INJECTION": "1"}`` enables the test-only
crash faults); ``host`` binds another address and ``prefix`` runs the agent under another command
(``["ip", "netns", "exec", NS]``: it must exec the agent, so the pid stays the agent's).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

#: The directory holding the ``device_agent`` package (a source checkout or site-packages): on the
#: agent's PYTHONPATH, so the subprocess imports this very copy.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

#: Importing numpy, grpc and the TFLite runtime on 2 busy cores can take several seconds.
STARTUP_TIMEOUT_S = 60.0
#: SIGTERM lets in-flight calls finish (device_agent.server.SHUTDOWN_GRACE_S = 10 s) and then stops workers.
STOP_TIMEOUT_S = 20.0

_LISTENING = re.compile(r"dflare-agent listening on (\S+):(\d+)")


@dataclass
class AgentProcess:
    """A running agent; iterating gives ``(uri, token)``."""

    uri: str
    token: str | None
    token_file: Path | None
    port: int
    process: subprocess.Popen
    log_path: Path
    cache_dir: Path

    def __iter__(self) -> Iterator:
        yield self.uri
        yield self.token

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the agent wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode


def agent_command(*args: str) -> list[str]:
    """The command line of ``dflare-agent`` in this interpreter."""
    return [sys.executable, "-m", "device_agent", *args]


def agent_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("DFLARE_AGENT_FAULT_INJECTION", None)
    env.update(extra or {})
    return env


def launch_agent(workdir: Path, *extra_args: str, token: str | None = "auto", env: Mapping[str, str] | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S, host: str = "127.0.0.1",
                 prefix: Sequence[str] = (), log_level: str = "INFO") -> AgentProcess:
    """Start ``dflare-agent serve --port 0`` and wait until it listens; the caller calls ``stop()``.

    Args:
        workdir: holds the token file, model cache and log.
        *extra_args: more ``serve`` flags.
        token: the token ("auto": a random one; None: no token).
        env: extra environment variables for the agent.
        startup_timeout_s: how long to wait for "listening on".
        host: the address to bind (a non-loopback one needs the token).
        prefix: a command the agent runs under (it must exec the agent).
        log_level: the agent's ``--log-level``.

    Raises:
        RuntimeError: the agent exited or did not start listening in time (the message has its log).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16) if token == "auto" else token
    token_file = None
    args = ["serve", "--host", host, "--port", "0", "--cache-dir", str(workdir / "cache"), "--log-level", log_level]
    if token is not None:
        token_file = workdir / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        args += ["--token-file", str(token_file)]
    log_path = workdir / "agent.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*prefix, *agent_command(*args, *extra_args)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=agent_env(env),
                                   cwd=str(workdir))
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            match = _LISTENING.search(log_path.read_text(errors="replace"))
            if match:
                bound, port = match.group(1), int(match.group(2))
                return AgentProcess(f"grpc://{bound}:{port}", token, token_file, port, process, log_path,
                                    workdir / "cache")
            if process.poll() is not None:
                raise RuntimeError(f"the agent exited with code {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not listen within {startup_timeout_s:g} s:\n{log_path.read_text()}")
            time.sleep(0.05)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise


@contextlib.contextmanager
def start_agent(workdir: Path, *extra_args: str, **options) -> Iterator[AgentProcess]:
    """:func:`launch_agent` for the duration of a ``with`` block (stopped on the way out)."""
    agent = launch_agent(workdir, *extra_args, **options)
    try:
        yield agent
    finally:
        agent.stop()
