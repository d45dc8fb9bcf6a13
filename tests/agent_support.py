"""The tests' agent launcher is the package's: ``host.deploy.loopback`` (also used by the demo and the benchmarks)."""

import subprocess
from pathlib import Path

from host.deploy.loopback import (
    STARTUP_TIMEOUT_S,
    STOP_TIMEOUT_S,
    AgentProcess,
    agent_command,
    agent_env,
    launch_agent,
    start_agent,
)

#: The checkout the tests run from.
ROOT = Path(__file__).resolve().parents[1]



def self_signed_certificate(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A one-day self-signed certificate for ``name`` and its key, made by openssl: (cert.pem, key.pem)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


__all__ = ["ROOT", "STARTUP_TIMEOUT_S", "STOP_TIMEOUT_S", "AgentProcess", "agent_command", "agent_env",
           "launch_agent", "self_signed_certificate", "start_agent"]
