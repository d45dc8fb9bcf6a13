"""Where models run: the Target protocol and its implementations."""

from host.targets.base import ModelSpec, Session, Target
from host.targets.local import LocalTarget

__all__ = ["LocalTarget", "ModelSpec", "Session", "Target", "open_target"]


def open_target(uri: str, **options) -> Target:
    """Open a target from its URI: ``local:``, ``grpc://HOST:PORT`` or ``adb://SERIAL``.

    Raises:
        host.errors.ConfigError: an unknown URI scheme.
    """
    from host.errors import ConfigError

    if uri in ("local", "local:"):
        return LocalTarget(allowed_external=options.get("allowed_external", ()))
    if uri.startswith("grpc://"):
        from host.targets.remote import RemoteTarget

        return RemoteTarget(uri, **options)
    if uri.startswith("adb://"):
        from host.targets.adb import AdbTarget

        return AdbTarget(uri, **options)
    raise ConfigError(f"unknown target URI {uri!r}: expected local:, grpc://HOST:PORT or adb://SERIAL")
