"""Fixtures running a real ``dflare-agent`` on a free loopback port (see tests/agent_support.py).

- ``agent``: one agent per test module, with a token; yields an :class:`AgentProcess`, which
  unpacks as ``uri, token``. Extra ``serve`` flags through indirect parametrization:
  ``@pytest.mark.parametrize("agent", [["--max-message-bytes", "1M"]], indirect=True)``.
- ``agent_uri``, ``agent_token``, ``agent_token_file``: pieces of ``agent``.
- ``agent_factory``: start more agents inside a test, ``agent_factory("--flag", token=None, env={...})``;
  all are stopped when the test ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.agent_support import AgentProcess, start_agent


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    extra = list(getattr(request, "param", None) or ())
    with start_agent(tmp_path_factory.mktemp("agent"), *extra) as running:
        yield running


@pytest.fixture
def agent_uri(agent: AgentProcess) -> str:
    return agent.uri


@pytest.fixture
def agent_token(agent: AgentProcess) -> str | None:
    return agent.token


@pytest.fixture
def agent_token_file(agent: AgentProcess) -> Path | None:
    return agent.token_file


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    stack = []

    def start(*extra_args: str, token: str | None = "auto", env: dict | None = None) -> AgentProcess:
        context = start_agent(tmp_path / f"agent{len(stack)}", *extra_args, token=token, env=env)
        running = context.__enter__()
        stack.append(context)
        return running

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)
