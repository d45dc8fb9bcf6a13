"""TLS from the host, end to end on loopback: grpcs:// and --tls-ca-file for dflare info, run and compare.

The agent serves a self-signed certificate made here by openssl for ``localhost``; the host's
commands verify it with ``--tls-ca-file`` (and ``--tls-server-name localhost``, the URI being an IP).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from host.cli import main
from host.exit_codes import ExitCode
from tests.agent_support import self_signed_certificate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ORIGINAL = FIXTURES / "models" / "digits28-float32.tflite"
COMPRESSED = FIXTURES / "models" / "digits28-int8.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")


@pytest.fixture
def tls_agent(agent_factory, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    agent = agent_factory("--tls-cert", str(cert), "--tls-key", str(key))
    return agent, agent.uri.replace("grpc://", "grpcs://"), cert


def _tls_flags(agent, cert: Path) -> list[str]:
    return ["--token-file", str(agent.token_file), "--tls-ca-file", str(cert), "--tls-server-name", "localhost"]


def test_info_over_grpcs_verifies_the_agents_certificate(tls_agent, capsys):
    agent, uri, cert = tls_agent
    assert main(["info", uri, "--json", *_tls_flags(agent, cert)]) == ExitCode.ok
    info = json.loads(capsys.readouterr().out)
    assert "xnnpack" in info["delegates"]
    # Without the CA the system's roots cannot verify a self-signed certificate: unreachable, not a crash.
    code = main(["info", uri, "--token-file", str(agent.token_file), "--tls-server-name", "localhost",
                 "--connect-timeout-s", "2"])
    assert code == ExitCode.unreachable
    assert uri in capsys.readouterr().err


def test_a_campaign_and_a_comparison_run_through_a_tls_agent(tls_agent, tmp_path, capsys):
    agent, uri, cert = tls_agent
    out = tmp_path / "out"
    code = main(["run", "--original", str(ORIGINAL), "--compressed", str(COMPRESSED), "--seeds", str(SEEDS),
                 "--limit", "3", "--max-queries", "600", "--target", uri, "--out", str(out), "--json",
                 "--progress", "log", "--no-minimize", *_tls_flags(agent, cert)])
    assert code == ExitCode.ok
    summary = json.loads(capsys.readouterr().out)
    assert summary["seeds"] + summary.get("skipped", 0) >= 1 and (out / "report.html").exists()
    code = main(["compare", "--model", str(COMPRESSED), "--seeds", str(SEEDS), "--limit", "8", "--runs", "8",
                 "--targets", f"{uri},delegate=xnnpack", "local:,delegate=xnnpack", "--out", str(tmp_path / "cmp"),
                 *_tls_flags(agent, cert)])
    assert code == ExitCode.ok
    result = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert all(not column["error"] for column in result["columns"]), result["columns"]
