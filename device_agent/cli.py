"""``dflare-agent``: run the device agent.

    dflare-agent serve [--host 127.0.0.1] [--port 50051] [--token-file F] [--tls-cert C --tls-key K]
                       [--cache-dir D] [--cache-max-bytes N] [--allow-delegate PATH ...]
                       [--max-message-bytes N] [--max-batch-bytes N] [--max-sessions N]
                       [--max-streams N] [--max-infer-calls N] [--max-infer-calls-per-session N]
                       [--stream-idle-timeout-s S] [--batch-timeout-s S] [--worker-cpus LIST] [--log-level L]

Binds loopback by default and refuses a non-loopback address without a token. Once listening it
prints ``dflare-agent listening on HOST:PORT`` on stdout (the real port when ``--port 0``), which
is what scripts and tests wait for. SIGTERM or Ctrl-C stops it gracefully: no new calls, in-flight
calls get :data:`~device_agent.server.SHUTDOWN_GRACE_S` seconds to finish.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from device_agent import __version__
from device_agent.cache import DEFAULT_CAPACITY_BYTES
from device_agent.cpu_affinity import check_worker_cpus, format_cpu_list, parse_cpu_list, pin_agent_beside_workers
from device_agent.server import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_INFER_CALLS,
    DEFAULT_MAX_INFER_CALLS_PER_SESSION,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_IDLE_TIMEOUT_S,
    SHUTDOWN_GRACE_S,
    AgentConfig,
    create_server,
)
from device_agent.worker import BATCH_TIMEOUT_ENV

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str) -> int:
    """Parse ``1048576``, ``64M``, ``64MiB`` or ``1G`` (binary units) into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1048576, 64M, 1GiB)")
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dflare-agent", description="Serve TFLite models on this device over gRPC.")
    parser.add_argument("--version", action="version", version=f"dflare-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the agent until SIGTERM / Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; anything else needs --token-file)")
    serve.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (default 50051)")
    serve.add_argument("--token-file", type=Path, help="file holding the token clients must send")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain for TLS (with --tls-key)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key for TLS (with --tls-cert)")
    serve.add_argument("--cache-dir", default="", help="model store (default ~/.cache/dflare-agent)")
    serve.add_argument("--cache-max-bytes", type=parse_bytes, default=DEFAULT_CAPACITY_BYTES,
                       help=f"model store capacity (default {DEFAULT_CAPACITY_BYTES >> 20}M)")
    serve.add_argument("--allow-delegate", action="extend", nargs="+", default=[], metavar="PATH",
                       help="delegate library that LoadModel may load as external:PATH (repeatable)")
    serve.add_argument("--max-message-bytes", type=parse_bytes, default=DEFAULT_MAX_MESSAGE_BYTES,
                       help=f"largest gRPC message either way (default {DEFAULT_MAX_MESSAGE_BYTES >> 20}M)")
    serve.add_argument("--max-batch-bytes", type=parse_bytes, default=None,
                       help=f"largest input batch (default {DEFAULT_MAX_BATCH_BYTES >> 20}M, "
                            "at most --max-message-bytes)")
    serve.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS,
                       help=f"most models loaded at once (default {DEFAULT_MAX_SESSIONS})")
    serve.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS,
                       help=f"InferStreams open at once; more get RESOURCE_EXHAUSTED (default {DEFAULT_MAX_STREAMS})")
    serve.add_argument("--max-infer-calls", type=int, default=DEFAULT_MAX_INFER_CALLS,
                       help=f"unary Infer calls in progress at once (default {DEFAULT_MAX_INFER_CALLS})")
    serve.add_argument("--max-infer-calls-per-session", type=int, default=DEFAULT_MAX_INFER_CALLS_PER_SESSION,
                       help="of those, on one session, so one hung model cannot take them all (default "
                            f"{DEFAULT_MAX_INFER_CALLS_PER_SESSION})")
    serve.add_argument("--stream-idle-timeout-s", type=float, default=DEFAULT_STREAM_IDLE_TIMEOUT_S, metavar="S",
                       help="an InferStream silent this long ends with DEADLINE_EXCEEDED (default "
                            f"{DEFAULT_STREAM_IDLE_TIMEOUT_S:g})")
    serve.add_argument("--batch-timeout-s", type=float, default=None, metavar="S",
                       help="kill a worker whose batch runs longer (default: 50x its slowest measured time per "
                            "image, at least 30 s)")
    serve.add_argument("--worker-cpus", default="", metavar="LIST",
                       help="run the model workers on these CPUs (e.g. 4-7: a phone's big cores) and the agent's "
                            "own threads on the others, so serving never preempts an interpreter (Linux/Android)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       type=str.upper, help="log verbosity (default INFO)")
    serve.set_defaults(func=serve_command)
    return parser


def _read_secret(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if not data.strip():
        raise ValueError(f"the {what} {path} is empty")
    return data


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Turn ``serve`` flags into an :class:`AgentConfig`.

    Raises:
        ValueError: unreadable files or inconsistent flags, with a message saying which.
    """
    token = _read_secret(args.token_file, "token file").decode().strip() if args.token_file else None
    cert = _read_secret(args.tls_cert, "TLS certificate") if args.tls_cert else None
    key = _read_secret(args.tls_key, "TLS key") if args.tls_key else None
    max_batch = args.max_batch_bytes or min(DEFAULT_MAX_BATCH_BYTES, args.max_message_bytes)
    for path in args.allow_delegate:
        if not Path(path).is_file():
            raise ValueError(f"--allow-delegate {path}: no such file")
    if args.batch_timeout_s is not None:
        if args.batch_timeout_s <= 0:
            raise ValueError(f"--batch-timeout-s must be positive, got {args.batch_timeout_s}")
        os.environ[BATCH_TIMEOUT_ENV] = repr(args.batch_timeout_s)  # the workers' timeout (device_agent.worker)
    worker_cpus = parse_cpu_list(args.worker_cpus) if args.worker_cpus else ()
    if worker_cpus:
        check_worker_cpus(worker_cpus)
    return AgentConfig(host=args.host, port=args.port, token=token, tls_cert=cert, tls_key=key,
                       cache_dir=args.cache_dir, cache_max_bytes=args.cache_max_bytes,
                       allowed_delegates=tuple(args.allow_delegate), max_message_bytes=args.max_message_bytes,
                       max_batch_bytes=max_batch, max_sessions=args.max_sessions, max_streams=args.max_streams,
                       max_infer_calls=args.max_infer_calls,
                       max_infer_calls_per_session=args.max_infer_calls_per_session,
                       stream_idle_timeout_s=args.stream_idle_timeout_s, worker_cpus=worker_cpus)


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("device_agent")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"dflare-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if config.worker_cpus:  # before the server starts its threads: they inherit the agent's CPUs
        agent_cpus = pin_agent_beside_workers(config.worker_cpus)
        log.info("workers run on CPUs %s, the agent on CPUs %s", format_cpu_list(config.worker_cpus),
                 format_cpu_list(agent_cpus))
    try:
        agent = create_server(config)
    except RuntimeError as exc:
        print(f"dflare-agent: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    stop = threading.Event()
    signals_seen = []

    def on_signal(signum: int, _frame) -> None:
        signals_seen.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"dflare-agent listening on {config.host}:{agent.port}", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("%s received: finishing in-flight calls (up to %.0f s)", signal.Signals(signals_seen[0]).name,
             SHUTDOWN_GRACE_S)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends it at once
    agent.stop(SHUTDOWN_GRACE_S)
    log.info("stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
