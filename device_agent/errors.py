"""Errors the agent raises while serving a request; ``server.py`` maps each to one gRPC status code.

Runtime errors (``runtime.ModelFormatError``, ``runtime.InputError``,
``runtime.DelegateUnavailableError``) are mapped too; these cover what only the agent knows:
unknown digests and sessions, size limits, worker crashes.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own request errors."""


class InvalidRequestError(AgentError):
    """A request field is malformed (maps to INVALID_ARGUMENT)."""


class NotFoundError(AgentError):
    """An unknown model digest or session id (maps to NOT_FOUND)."""


class LimitExceededError(AgentError):
    """A configured size limit would be exceeded (maps to RESOURCE_EXHAUSTED)."""


class WorkerCrashedError(AgentError):
    """The worker process died while running a request (maps to ABORTED)."""


class AgentShuttingDownError(AgentError):
    """The agent is stopping and takes no new work (maps to UNAVAILABLE)."""
