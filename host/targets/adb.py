"""``adb://SERIAL`` and ``adb://HOST:PORT`` targets: deploy the agent, forward a port, then act as the agent.

:class:`AdbTarget` runs :class:`host.deploy.adb.AdbDeployment` (check, push, start, forward, health)
when it opens and wraps a :class:`host.targets.remote.RemoteTarget` on the forwarded port; ``close``
stops the agent and the forward. ``info()`` is the agent's own report plus a ``deploy`` entry with
what the deployment found (model, SoC, Android version, ABI, Python, temperatures when readable),
which the campaign store records with the run.

When the adb link drops (cable pulled, Wi-Fi lost, adbd restarted) the agent keeps running on the
device. A short blip is absorbed by the forwarder (it reconnects on the next gRPC connection) and
the client's own retries. A longer outage makes a call fail as unreachable; the session then waits
up to ``reconnect_timeout_s`` (``$DFLARE_ADB_RECONNECT_TIMEOUT_S``, default 60 s) for the link to
come back, checks that the agent still runs, opens a fresh channel and repeats the call (inference
is a pure function of its inputs, so a repeated call changes nothing, and the search's query counts
are its own). When the link stays down, or the agent
is gone, the call fails with :class:`host.errors.TargetUnreachableError` naming the device; a
``dflare run`` then exits 3 with every finished seed stored, and the same command resumes it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

import numpy as np

from host.deploy.adb import AdbDeployment, AdbDeployOptions, DeviceAddress
from host.errors import ConfigError, DeployError, TargetUnreachableError
from host.targets.base import ModelSpec

if TYPE_CHECKING:
    from host.targets.remote import DeviceTensors

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Options given to ``open_target`` that belong to the deployment rather than to the gRPC client.
_DEPLOY_FIELDS = {f.name for f in dataclasses.fields(AdbDeployOptions)}
#: Options a grpc:// target takes that make no sense here (the deployment makes its own token).
_IGNORED = {"token", "token_file"}
#: How long a call waits for a dropped adb link to come back before failing: room for a Wi-Fi roam,
#: adbd restarting or a cable re-plugged; short enough that a campaign on a device that is gone stops
#: within a minute or two (rerunning it resumes).
DEFAULT_RECONNECT_TIMEOUT_S = 60.0
#: Environment variable overriding DEFAULT_RECONNECT_TIMEOUT_S (seconds), e.g. for a lab on flaky Wi-Fi.
RECONNECT_TIMEOUT_ENV = "DFLARE_ADB_RECONNECT_TIMEOUT_S"
#: Delay between reconnection attempts while the link is down.
RECONNECT_POLL_S = 0.5


def _env_seconds(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment, else ``default``.

    Raises:
        ConfigError: the variable is set to something else.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"${name}={text!r} is not a number of seconds >= 0")
    return value


class AdbTarget:
    """A device reached over adb; see the module docstring.

    Args:
        uri: ``adb://SERIAL`` or ``adb://HOST:PORT``.
        deploy_options: how to deploy; else built from the ``AdbDeployOptions`` fields in ``options``.
        reconnect_timeout_s: how long a call waits for a dropped adb link (default
            ``$DFLARE_ADB_RECONNECT_TIMEOUT_S``, else ``DEFAULT_RECONNECT_TIMEOUT_S``; see the module docstring).
        **options: ``AdbDeployOptions`` fields and :class:`RemoteTarget` options (timeouts, retries).

    Raises:
        host.errors.DeployError subclasses: the deployment failed (the stage is in the class).
    """

    def __init__(self, uri: str, deploy_options: AdbDeployOptions | None = None,
                 reconnect_timeout_s: float | None = None, **options) -> None:
        from host.targets.remote import AgentProbe, RemoteTarget

        deploy_kw = {k: options.pop(k) for k in list(options) if k in _DEPLOY_FIELDS}
        for k in _IGNORED:
            options.pop(k, None)
        self.address = DeviceAddress.parse(uri)
        self.uri = self.address.uri
        self.reconnect_timeout_s = reconnect_timeout_s if reconnect_timeout_s is not None else _env_seconds(
            RECONNECT_TIMEOUT_ENV, DEFAULT_RECONNECT_TIMEOUT_S)
        self.deployment = AdbDeployment(self.address, deploy_options or AdbDeployOptions(**deploy_kw),
                                        probe=AgentProbe())
        self.deployment.initialize()
        try:
            self.remote = RemoteTarget(f"grpc://{self.deployment.grpc_address}", token=self.deployment.token,
                                       **options)
        except BaseException:
            self.deployment.stop()
            raise

    def __repr__(self) -> str:
        return f"AdbTarget({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def info(self) -> dict:
        """The agent's report plus ``deploy``: the device facts the deployment found.

        Raises:
            TargetUnreachableError: the adb link or the agent is gone.
        """
        info = dict(self.call("asking for device info", self.remote.info))
        info["deploy"] = dict(self.deployment.device_info)
        if self.deployment.forwarder is not None:
            info["deploy"]["adb_reconnects"] = self.deployment.forwarder.reconnects
        return info

    def load(self, model: ModelSpec) -> AdbSession:
        """Load a model on the device's agent (see :meth:`RemoteTarget.load`)."""
        return AdbSession(self, self.call(f"loading {model.name}", lambda: self.remote.load(model)))

    def close(self) -> None:
        """Unload, stop the agent, delete its token and close the forward."""
        try:
            self.remote.close()
        finally:
            self.deployment.stop()

    def __enter__(self) -> AdbTarget:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- riding out a dropped link ------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` (a call through the forward), repeating it once the adb link is back.

        Raises:
            TargetUnreachableError: the link stayed down ``reconnect_timeout_s``, the agent is gone,
                or the agent is unreachable over a live link (the original error).
        """
        deadline = time.monotonic() + self.reconnect_timeout_s
        while True:
            forwarder = self.deployment.forwarder
            connects_before = forwarder.connects if forwarder is not None else 0
            try:
                return fn()
            except TargetUnreachableError as exc:
                self._recover(exc, what, connects_before, deadline)

    def _recover(self, error: TargetUnreachableError, what: str, connects_before: int, deadline: float) -> None:
        """Wait for the adb link after ``error``; return when the call is worth repeating, else raise."""
        forwarder = self.deployment.forwarder
        if forwarder is None:
            raise error
        last = ""
        while True:
            try:
                forwarder.mux()
                alive = self.deployment.agent_alive()
                break
            except DeployError as exc:
                last = str(exc).removeprefix(f"{self.uri}: ")
            if time.monotonic() >= deadline:
                raise TargetUnreachableError(
                    self, f"{what}: the adb connection dropped and did not come back within "
                          f"{self.reconnect_timeout_s:g} s ({last}); reconnect the device (cable, Wi-Fi, "
                          "`adb tcpip`) and rerun the same command: a campaign resumes from its finished seeds"
                ) from None
            time.sleep(RECONNECT_POLL_S)
        if not alive:
            tail = self.deployment.agent_log_tail()
            raise TargetUnreachableError(
                self, f"{what}: the agent is no longer running on the device (rebooted, or killed by the system); "
                      f"rerun the same command to deploy it again and resume. Its log ends with:\n"
                      f"{tail or '(empty)'}") from None
        if forwarder.connects == connects_before or time.monotonic() >= deadline:
            raise error  # the link never dropped (or keeps failing): the agent itself is not answering
        _LOG.warning("%s: the adb link dropped during %s and is back (reconnect %d); repeating the call",
                     self.uri, what, forwarder.reconnects)
        self.remote.reset_channel()  # skip gRPC's reconnect backoff accumulated during the outage


class AdbSession:
    """A model loaded on the device; calls ride out a dropped adb link (see the module docstring).

    The figures of the session contract (``host.targets.base.Session``) are the underlying
    :class:`host.targets.remote.RemoteSession`'s.
    """

    def __init__(self, target: AdbTarget, session) -> None:
        self._target = target
        self._session = session
        self.model = session.model
        self.input_spec = session.input_spec
        self.output_specs = session.output_specs
        self.delegated_nodes: int | None = session.delegated_nodes
        self.cpu_ops: list[str] | None = session.cpu_ops

    @property
    def last_invoke_ms(self) -> float | None:
        return self._session.last_invoke_ms

    @property
    def peak_memory_bytes(self) -> int | None:
        return self._session.peak_memory_bytes

    def __repr__(self) -> str:
        return f"AdbSession({self._session.model.name}, {self._target.uri})"

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Run a uint8 (N, H, W, C) batch; return float32 (N, classes) (see ``RemoteSession.infer``)."""
        return self._target.call(f"running {self._session.model.name}", lambda: self._session.infer(images))

    def infer_all(self, images: np.ndarray) -> list[np.ndarray]:
        """Run a batch and return every model output as float32."""
        return self._target.call(f"running {self._session.model.name}", lambda: self._session.infer_all(images))

    def infer_many(self, batches: Sequence[np.ndarray], **kw) -> list[np.ndarray]:
        """Run several batches over one stream (see ``RemoteSession.infer_many``)."""
        return self._target.call(f"streaming through {self._session.model.name}",
                                 lambda: self._session.infer_many(batches, **kw))

    def tensors(self, image: np.ndarray, **kw) -> DeviceTensors:
        """One image's intermediate tensors from the device (see ``RemoteSession.tensors``)."""
        return self._target.call(f"reading the tensors of {self._session.model.name}",
                                 lambda: self._session.tensors(image, **kw))

    def close(self) -> None:
        """Unload the model on the device's agent."""
        self._session.close()
