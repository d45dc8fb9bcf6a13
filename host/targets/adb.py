"""``adb://SERIAL`` and ``adb://HOST:PORT`` targets: deploy the agent, forward a port, then act as the agent.

:class:`AdbTarget` runs :class:`host.deploy.adb.AdbDeployment` (check, push, start, forward, health)
when it opens and wraps a :class:`host.targets.remote.RemoteTarget` on the forwarded port; ``close``
stops the agent and the forward. ``info()`` is the agent's own report plus a ``deploy`` entry with
what the deployment found (model, SoC, Android version, ABI, Python, temperatures when readable),
which the campaign store records with the run. When the adb link drops, the forwarder reconnects on
the next gRPC connection attempt; the agent keeps running on the device meanwhile.
"""

from __future__ import annotations

import dataclasses

from host.deploy.adb import AdbDeployment, AdbDeployOptions, DeviceAddress
from host.targets.base import ModelSpec, Session

#: Options given to ``open_target`` that belong to the deployment rather than to the gRPC client.
_DEPLOY_FIELDS = {f.name for f in dataclasses.fields(AdbDeployOptions)}
#: Options a grpc:// target takes that make no sense here (the deployment makes its own token).
_IGNORED = {"token", "token_file"}


class AdbTarget:
    """A device reached over adb; see the module docstring."""

    def __init__(self, uri: str, deploy_options: AdbDeployOptions | None = None, **remote_options) -> None:
        from host.targets.remote import RemoteTarget

        deploy_kw = {k: remote_options.pop(k) for k in list(remote_options) if k in _DEPLOY_FIELDS}
        for k in _IGNORED:
            remote_options.pop(k, None)
        options = deploy_options or AdbDeployOptions(**deploy_kw)
        self.address = DeviceAddress.parse(uri)
        self.uri = self.address.uri
        self.deployment = AdbDeployment(self.address, options)
        self.deployment.initialize()
        try:
            self.remote = RemoteTarget(f"grpc://{self.deployment.grpc_address}", token=self.deployment.token,
                                       **remote_options)
        except BaseException:
            self.deployment.stop()
            raise

    def __repr__(self) -> str:
        return f"AdbTarget({self.uri!r})"

    def info(self) -> dict:
        info = dict(self.remote.info())
        info["deploy"] = dict(self.deployment.device_info)
        if self.deployment.forwarder is not None:
            info["deploy"]["adb_reconnects"] = self.deployment.forwarder.reconnects
        return info

    def load(self, model: ModelSpec) -> Session:
        return self.remote.load(model)

    def close(self) -> None:
        try:
            self.remote.close()
        finally:
            self.deployment.stop()

    def __enter__(self) -> AdbTarget:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
