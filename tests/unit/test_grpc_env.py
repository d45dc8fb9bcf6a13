"""device_agent.grpc_env: gRPC's low-latency settings are set before grpc loads, and never override the user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from device_agent import grpc_env

ROOT = Path(__file__).resolve().parents[2]


def _fresh_python(code: str, **env: str) -> dict:
    """Run ``code`` in a new interpreter (nothing imported yet); it prints a JSON dict."""
    clean = {k: v for k, v in os.environ.items() if k not in (grpc_env.GRPC_EXPERIMENTS_ENV, grpc_env.TUNING_ENV)}
    clean["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env},
                          timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


_REPORT = "import json, os, sys; print(json.dumps({'env': os.environ.get('GRPC_EXPERIMENTS'), 'applied': applied}))"


def test_apply_sets_the_experiments_before_grpc_is_imported() -> None:
    out = _fresh_python("from device_agent import grpc_env; applied = grpc_env.apply(); " + _REPORT)
    assert out == {"env": grpc_env.LOW_LATENCY_EXPERIMENTS, "applied": True}


def test_apply_is_a_no_op_once_grpc_is_imported() -> None:
    out = _fresh_python("import grpc; from device_agent import grpc_env; applied = grpc_env.apply(); " + _REPORT)
    assert out == {"env": None, "applied": False}


def test_the_users_setting_and_the_opt_out_win() -> None:
    code = "from device_agent import grpc_env; applied = grpc_env.apply(); " + _REPORT
    assert _fresh_python(code, GRPC_EXPERIMENTS="-event_engine_dns") == {"env": "-event_engine_dns", "applied": False}
    assert _fresh_python(code, DFLARE_GRPC_TUNING="0") == {"env": None, "applied": False}


def test_agent_server_and_host_client_apply_it_on_import() -> None:
    for module in ("device_agent.server", "host.targets.remote"):
        out = _fresh_python(f"import {module}; applied = None; " + _REPORT)
        assert out["env"] == grpc_env.LOW_LATENCY_EXPERIMENTS, module
