"""Every error the device agent raises, under one root; ``server.py`` maps each to one gRPC status code.

The runtime's errors (:mod:`device_agent.runtime`, shared with the host's in-process target) and
the agent's own (unknown digests and sessions, size limits, worker crashes) live here together.
Names never repeat a class name of ``host/errors.py``: the host translates a status code into its
own error (``host.errors.InvalidRequestError`` for INVALID_ARGUMENT, say), and both may meet in
one module, so the agent's carry an ``Agent`` or ``Runtime`` prefix where the host has the same
concept. The runtime's errors keep the builtin base they always had (``ImportError``,
``ValueError``, ``RuntimeError``) so an ``except`` written for the builtin still catches them.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every device agent error."""


class RuntimeUnavailableError(AgentError, ImportError):
    """Neither ai_edge_litert nor tflite_runtime is installed."""


class ModelFormatError(AgentError, ValueError):
    """The bytes are not a loadable TFLite model (maps to INVALID_ARGUMENT)."""


class InputError(AgentError, ValueError):
    """An input batch does not match the model: shape, dtype or byte length (maps to INVALID_ARGUMENT)."""


class RuntimeDelegateUnavailableError(AgentError, RuntimeError):
    """The requested delegate cannot be used on this device (maps to FAILED_PRECONDITION)."""


class AgentInvalidRequestError(AgentError):
    """A request field is malformed (maps to INVALID_ARGUMENT)."""


class NotFoundError(AgentError):
    """An unknown model digest or session id (maps to NOT_FOUND)."""


class LimitExceededError(AgentError):
    """A configured size limit would be exceeded (maps to RESOURCE_EXHAUSTED)."""


class AgentWorkerCrashedError(AgentError):
    """The worker process died while running a request (maps to ABORTED)."""


class AgentShuttingDownError(AgentError):
    """The agent is stopping and takes no new work (maps to UNAVAILABLE)."""


class StreamIdleError(AgentError):
    """An InferStream sent nothing for the idle timeout (maps to DEADLINE_EXCEEDED)."""
