"""``make demo``: start a local agent, run a short campaign through it, print the summary and report path.

The compressed model (digits28 int8) runs in a real ``dflare-agent`` on a free loopback port with
a fresh token; the original (float32) runs in this process. Output goes to ``demo-out/`` (replaced
on every run: the agent's port, and so the campaign's target, changes each time).

    .venv/bin/python scripts/demo.py [--seeds N] [--max-queries N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host.cli import main as dflare  # noqa: E402
from host.deploy.loopback import start_agent  # noqa: E402

MODELS = ROOT / "tests" / "fixtures" / "models"
SEEDS = ROOT / "tests" / "fixtures" / "seeds" / "digits28.npz"

#: Enough seeds to see several triggering inputs, few enough that the demo takes seconds.
DEFAULT_SEEDS = 20
#: DFlare finds most digits28 int8 deviations within a few hundred queries; 2,000 bounds the misses.
DEFAULT_MAX_QUERIES = 2000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a short dflare campaign through a local agent.")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds to search (default {DEFAULT_SEEDS})")
    parser.add_argument("--max-queries", type=int, default=DEFAULT_MAX_QUERIES,
                        help=f"queries per seed (default {DEFAULT_MAX_QUERIES})")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-out", help="output directory (default demo-out/)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dflare-demo-agent-") as workdir, start_agent(Path(workdir)) as agent:
        print(f"== agent listening on {agent.uri} (pid {agent.pid}, token in {agent.token_file})", flush=True)
        print(f"$ dflare info {agent.uri} --token-file {agent.token_file}", flush=True)
        code = dflare(["info", agent.uri, "--token-file", str(agent.token_file)])
        if code != 0:
            return code
        run_args = [
            "run", "--original", str(MODELS / "digits28-float32.tflite"),
            "--compressed", str(MODELS / "digits28-int8.tflite"), "--seeds", str(SEEDS),
            "--target", agent.uri, "--token-file", str(agent.token_file), "--limit", str(args.seeds),
            "--max-queries", str(args.max_queries), "--out", str(args.out), "--force-new",
        ]
        print(f"$ dflare {' '.join(run_args)}", flush=True)
        code = dflare(run_args)
        if code != 0:
            return code
    summary = json.loads((args.out / "summary.json").read_text())
    print("== summary (summary.json):")
    print(json.dumps({k: summary[k] for k in ("seeds", "triggered", "success_rate", "queries_per_trigger",
                                              "seconds_per_trigger", "total_queries", "out")}, indent=2))
    print(f"== report: {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
