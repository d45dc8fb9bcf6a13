"""The committed device_agent/_gen code matches a fresh `scripts/gen_protos.sh` run."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py")


def test_committed_protos_match_a_fresh_generation(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, env=env,
                   capture_output=True, timeout=120)
    stale = [name for name in GENERATED
             if (tmp_path / name).read_text() != (ROOT / "device_agent" / "_gen" / name).read_text()]
    assert not stale, (
        f"device_agent/_gen/{', '.join(stale)} differ from protos/ (generated with grpcio-tools "
        f"{version('grpcio-tools')}): run `make protos` and commit the result; if the difference is only "
        "the tool version, install the grpcio-tools pinned in pyproject.toml's dev extra"
    )


def test_generated_code_imports_package_relative():
    grpc_module = (ROOT / "device_agent" / "_gen" / "agent_pb2_grpc.py").read_text()
    assert "from . import agent_pb2" in grpc_module
    assert "from dflare." not in grpc_module
