"""Run a short campaign through a local agent and save a screenshot of its report (docs/report-screenshot.png).

The compressed model runs in a real ``dflare-agent`` on loopback, as in ``make demo``.

    .venv/bin/python scripts/report_screenshot.py [--out DIR] [--png docs/report-screenshot.png]

Needs headless Chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host.cli import main as dflare  # noqa: E402
from host.deploy.loopback import start_agent  # noqa: E402
from tests.chromium import render  # noqa: E402

#: Tall enough to show the header, the summary, the plots, the analysis and the first gallery entries.
WINDOW_PX = (1280, 3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="campaign directory (default: a temporary one)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "report-screenshot.png")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="dflare-screenshot-"))
    models = ROOT / "tests" / "fixtures" / "models"
    with tempfile.TemporaryDirectory(prefix="dflare-agent-") as workdir, start_agent(Path(workdir)) as agent:
        code = dflare(["run", "--original", str(models / "digits28-float32.tflite"),
                       "--compressed", str(models / "digits28-int8.tflite"),
                       "--seeds", str(ROOT / "tests" / "fixtures" / "seeds" / "digits28.npz"),
                       "--target", agent.uri, "--token-file", str(agent.token_file), "--force-new",
                       "--limit", "20", "--max-queries", "5000", "--out", str(out), "--progress", "log"])
    if code != 0:
        return code
    args.png.parent.mkdir(parents=True, exist_ok=True)
    page = render(out / "report.html", screenshot=args.png, window=WINDOW_PX)
    if page.console:
        print("console messages:", *page.console, sep="\n", file=sys.stderr)
        return 1
    print(f"screenshot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
