"""Where models run: the Target protocol and its implementations."""

from host.targets.base import ModelSpec, Session, Target
from host.targets.local import LocalTarget
from host.targets.options import TargetOptions

__all__ = ["LocalTarget", "ModelSpec", "Session", "Target", "TargetOptions", "open_target"]


def open_target(uri: str, options: TargetOptions | None = None, **extra) -> Target:
    """Open a target from its URI: ``local:``, ``grpc://HOST:PORT``, ``grpcs://HOST:PORT`` or ``adb://SERIAL``.

    Args:
        uri: where the target is.
        options: credentials and limits; each scheme takes the ones that apply to it.
        extra: keyword arguments for the target class itself (tests, and TLS settings for ``grpc://``).

    Raises:
        host.errors.ConfigError: an unknown URI scheme.
    """
    from host.errors import ConfigError

    options = {**(options or TargetOptions()).for_uri(uri), **extra}

    if uri in ("local", "local:"):
        return LocalTarget(**options)
    if uri.startswith(("grpc://", "grpcs://")):
        from host.targets.remote import RemoteTarget

        return RemoteTarget(uri, **options)
    if uri.startswith("adb://"):
        from host.targets.adb import AdbTarget

        return AdbTarget(uri, **options)
    raise ConfigError(f"unknown target URI {uri!r}: expected local:, grpc://HOST:PORT, grpcs://HOST:PORT (TLS) "
                      "or adb://SERIAL")
