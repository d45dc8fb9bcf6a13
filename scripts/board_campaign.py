"""Measure x86-vs-arm64 disagreements against an agent running on the emulated board.

Run by ``scripts/emulated_board.sh run`` (``make test-board``), which passes the board's
interpreter. This script starts ``dflare-agent serve`` with it on a free loopback port (a token
file, a private cache), then, through the real CLI:

1. ``dflare info`` of the board agent (it must report an aarch64 machine);
2. ``dflare compare --model M-int8.tflite --targets local: grpc://BOARD`` on every int8 fixture
   model, for the default CPU kernels and for XNNPACK: top-1 disagreements and the largest
   probability difference between the x86-64 build of the runtime (here) and its aarch64 build
   (under qemu);
3. a tiny ``dflare run`` with the same int8 model on both sides (x86 as the reference, the board as
   the target): DFlare searching for inputs on which the two builds of the kernels disagree.

It prints one table and exits 0 when every step ran (disagreements are measurements, not failures);
2 when a step failed, with the agent's log tail. Sizes are small and timeouts long: the emulated
board is about 400 times slower per invoke than this machine (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
#: Importing numpy + grpc + litert under emulation takes 3-5 s; on 2 busy shared cores far more.
AGENT_START_TIMEOUT_S = 240.0
#: One compare or run step: an invoke costs ~10 ms emulated, plus a gRPC round trip.
STEP_TIMEOUT_S = 900.0
#: The agent answers over loopback, but its first reply comes after the emulated imports.
CONNECT_TIMEOUT_S = 120.0
#: Seeds compared per model (the fixture seed sets hold 200); batches of 20 keep round trips few.
COMPARE_SEEDS = 200
COMPARE_BATCH = 20
_LISTENING = re.compile(r"dflare-agent listening on (\S+):(\d+)")


def start_agent(board_python: str, pythonpath: str, work: Path, token_file: Path) -> tuple[subprocess.Popen, int]:
    """Start the agent under emulation; return the process and its port.

    Raises:
        RuntimeError: it exited or did not listen within AGENT_START_TIMEOUT_S (with its log tail).
    """
    log_path = work / "agent.log"
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    cmd = [board_python, "-m", "device_agent", "serve", "--host", "127.0.0.1", "--port", "0",
           "--token-file", str(token_file), "--cache-dir", str(work / "cache")]
    log_file = open(log_path, "w")  # noqa: SIM115 - the agent writes to it for its whole life
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=work)
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = _LISTENING.search(line)
        if match:
            # keep reading its stdout, so the agent never blocks on a full pipe
            threading.Thread(target=proc.stdout.read, daemon=True, name="board-agent-stdout").start()
            return proc, int(match.group(2))
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the board agent did not start (exit {proc.returncode}); {log_path} ends with:\n"
                       + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))


def dflare(*args: str) -> tuple[dict, float]:
    """Run ``dflare ARGS --json``; return the parsed output and its wall time.

    Raises:
        RuntimeError: a non-zero exit (stderr included).
    """
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "host.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=STEP_TIMEOUT_S)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dflare {args[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board-python", required=True, help="the board's interpreter (run through qemu)")
    parser.add_argument("--board-pythonpath", required=True, help="PYTHONPATH for it: wheels + this checkout")
    parser.add_argument("--work", type=Path, required=True, help="agent cache, logs and campaign outputs")
    parser.add_argument("--seeds", type=int, default=8, help="seeds of the dflare run (default 8)")
    parser.add_argument("--max-queries", type=int, default=200, help="query budget per seed (default 200)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    token_file = work / "token"
    token_file.write_text(secrets.token_urlsafe(32))
    token_file.chmod(0o600)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    proc, port = start_agent(args.board_python, args.board_pythonpath, work, token_file)
    timings["agent_start_s"] = time.monotonic() - t0
    uri = f"grpc://127.0.0.1:{port}"
    auth = ["--token-file", str(token_file), "--connect-timeout-s", str(CONNECT_TIMEOUT_S)]
    figures: dict = {"board": uri, "compare": [], "run": None, "timings_s": timings}
    try:
        info, timings["info_s"] = dflare("info", uri, "--json", "--token-file", str(token_file))
        figures["board_info"] = {k: info.get(k) for k in ("machine", "runtime", "runtime_version", "python")}
        if info.get("machine") != "aarch64":
            raise RuntimeError(f"the board agent reports machine {info.get('machine')!r}, not aarch64")
        for name in ("digits28", "digits32rgb"):
            model = FIXTURES / "models" / f"{name}-int8.tflite"
            out = work / f"compare-{name}"
            shutil.rmtree(out, ignore_errors=True)
            summary, timings[f"compare_{name}_s"] = dflare(
                "compare", "--model", str(model), "--seeds", str(FIXTURES / "seeds" / f"{name}.npz"),
                "--targets", "local:,name=x86", "local:,delegate=xnnpack,name=x86-xnnpack",
                f"{uri},name=arm64", f"{uri},delegate=xnnpack,name=arm64-xnnpack",
                "--limit", str(COMPARE_SEEDS), "--batch-size", str(COMPARE_BATCH), "--runs", "2",
                "--warmup-runs", "1", "--out", str(out), "--json", *auth)
            for pair in summary["pairs"]:
                if {pair["a"], pair["b"]} in ({"x86", "arm64"}, {"x86-xnnpack", "arm64-xnnpack"}):
                    figures["compare"].append({
                        "model": model.name, "pair": f"{pair['a']} vs {pair['b']}", "seeds": pair["seeds"],
                        "disagreements": pair["disagreements"], "max_abs_diff": pair["max_abs_diff"]})
        out = work / "run-x86-vs-arm64"
        shutil.rmtree(out, ignore_errors=True)
        model = FIXTURES / "models" / "digits28-int8.tflite"
        summary, timings["run_s"] = dflare(
            "run", "--original", str(model), "--compressed", str(model), "--reference-target", "local:",
            "--target", uri, "--seeds", str(FIXTURES / "seeds" / "digits28.npz"), "--limit", str(args.seeds),
            "--max-queries", str(args.max_queries), "--out", str(out), "--progress", "log", "--json", *auth)
        figures["run"] = {"model": model.name, "seeds": summary["seeds"], "triggered": summary["triggered"],
                          "total_queries": summary["total_queries"], "max_queries": args.max_queries,
                          "out": summary["out"]}
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        print(f"board campaign failed: {exc}", file=sys.stderr)
        tail = (work / "agent.log").read_text(errors="replace").splitlines()[-20:]
        print("agent log tail:\n" + "\n".join(tail), file=sys.stderr)
        return 2
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def print_figures(figures: dict) -> None:
    info = figures["board_info"]
    print(f"board agent {figures['board']}: {info['machine']}, {info['runtime']} {info['runtime_version']}, "
          f"Python {info['python']} (qemu-user)")
    print(f"{'model':<24}{'pair':<32}{'seeds':>6}{'top-1 disagreements':>21}{'max |dp|':>11}")
    for row in figures["compare"]:
        print(f"{row['model']:<24}{row['pair']:<32}{row['seeds']:>6}{row['disagreements']:>21}"
              f"{row['max_abs_diff']:>11.2e}")
    run = figures["run"]
    print(f"dflare run {run['model']} x86 (reference) vs arm64 (target): {run['triggered']} of {run['seeds']} "
          f"searched seeds triggered, {run['total_queries']} queries (budget {run['max_queries']}/seed)")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in figures["timings_s"].items()))


if __name__ == "__main__":
    sys.exit(main())
