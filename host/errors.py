"""Every error the host side raises, under one root so callers can catch "any dflare error".

Messages name the thing at fault (the target URI, the file, the field) and what to do about it.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every dflare-edge host error."""


class ConfigError(Error):
    """A flag, campaign file or seed set is unusable (maps to exit code 2)."""


class ModelError(Error):
    """A model file is missing, not TFLite, or does not fit the other model."""


class SeedError(ConfigError):
    """Seed images have the wrong shape, dtype or format."""


class TargetError(Error):
    """A target (local interpreter or remote agent) failed; the message names the target."""

    def __init__(self, target: object, msg: str) -> None:
        self.target = target
        super().__init__(f"{target}: {msg}")


class TargetUnreachableError(TargetError):
    """The agent could not be reached (maps to exit code 3)."""


class AuthenticationError(TargetError):
    """The agent refused the token, or none was given."""


class DelegateUnavailableError(TargetError):
    """The requested delegate is not available on the target."""


class InvalidRequestError(TargetError):
    """The target rejected a request as malformed (shape, dtype, model bytes)."""


class WorkerCrashedError(TargetError):
    """The model crashed the agent's worker process; the agent restarted it."""


class ProtocolError(TargetError):
    """The agent answered something the host did not expect (version skew, truncated data)."""


class DeployError(Error):
    """Deploying the agent to a device failed; subclasses name the stage."""


class DeviceDeployError(DeployError):
    """A deploy stage failed on one device; the message starts with the device (``adb://SERIAL``)."""

    def __init__(self, device: object, msg: str) -> None:
        self.device = device
        super().__init__(f"{device}: {msg}")


class DeviceConnectError(DeviceDeployError):
    """Stage connect: the device could not be reached over adb."""


class DeviceNotAuthorizedError(DeviceConnectError):
    """Stage connect: the device did not accept this host's adb key."""


class DeviceCheckError(DeviceDeployError):
    """Stage check: the device cannot run the agent (ABI, Python, modules, free space)."""


class UnsupportedAbiError(DeviceCheckError):
    """Stage check: no agent build for the device's CPU ABI."""


class NoPythonError(DeviceCheckError):
    """Stage check: no usable Python interpreter on the device."""


class PushError(DeviceDeployError):
    """Stage push: copying the agent or its token to the device failed."""


class AgentStartError(DeviceDeployError):
    """Stage start: the agent process died or never became healthy; the message has its log tail."""


class ForwardError(DeviceDeployError):
    """Stage forward: the host port could not be forwarded to the agent."""


class CampaignError(Error):
    """A campaign cannot start or resume (e.g. its stored config differs)."""


class OutputDirError(ConfigError):
    """The ``--out`` directory cannot be created or written (a file, a read-only filesystem; exit code 2)."""


class HealthCheckError(TargetError):
    """A lab device failed its health check (golden outputs differ from the recorded ones); it is taken out."""


class RepairError(Error):
    """``dflare repair`` cannot proceed: TensorFlow missing, no triggering inputs, a model that does not match."""
