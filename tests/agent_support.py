"""The tests' agent launcher is the package's: ``host.deploy.loopback`` (also used by the demo and the benchmarks)."""

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

__all__ = ["ROOT", "STARTUP_TIMEOUT_S", "STOP_TIMEOUT_S", "AgentProcess", "agent_command", "agent_env",
           "launch_agent", "start_agent"]
