"""Target specs as `dflare compare` and campaign configs give them: ``URI[,delegate=X][,threads=N][,name=L]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from host.errors import ConfigError

#: Options a target spec may carry after the URI (``local:,delegate=xnnpack,threads=2``).
TARGET_OPTIONS = ("delegate", "threads", "name")


@dataclass(frozen=True)
class TargetSpec:
    """One column of the comparison: where the model runs and with which options.

    Attributes:
        uri: the target URI (``local:``, ``grpc://HOST:PORT``, ``adb://SERIAL``).
        delegate: the delegate to load the model with (``None``: the model's own default, ``cpu``).
        threads: interpreter threads (``None``: the runtime's default).
        name: a display label; empty means one is derived from the URI and options.
    """

    uri: str
    delegate: str | None = None
    threads: int | None = None
    name: str = ""

    @property
    def label(self) -> str:
        """A short display label, e.g. ``local:/xnnpack`` or ``grpc://10.0.0.2:50051/gpu/t2``."""
        if self.name:
            return self.name
        parts = [self.uri, self.delegate or "cpu"]
        if self.threads is not None:
            parts.append(f"t{self.threads}")
        return "/".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "delegate": self.delegate or "cpu", "threads": self.threads, "label": self.label}


def parse_target_spec(text: str) -> TargetSpec:
    """Parse ``URI[,delegate=NAME][,threads=N][,name=LABEL]``.

    Examples: ``local:,delegate=xnnpack``; ``grpc://127.0.0.1:50051,delegate=ref,threads=2``.

    Raises:
        ConfigError: an empty URI, an option without ``=``, an unknown option, or a bad value.
    """
    uri, *options = [part.strip() for part in text.split(",")]
    if not uri:
        raise ConfigError(f"target spec {text!r} has no URI; expected e.g. local:,delegate=xnnpack")
    if uri == "local":
        uri = "local:"
    values: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip():
            raise ConfigError(f"target spec {text!r}: option {option!r} needs a value (KEY=VALUE)")
        if key not in TARGET_OPTIONS:
            raise ConfigError(f"target spec {text!r}: unknown option {key!r}; known: {', '.join(TARGET_OPTIONS)}")
        if key in values:
            raise ConfigError(f"target spec {text!r}: option {key!r} given twice")
        values[key] = value.strip()
    threads = values.get("threads")
    if threads is not None:
        try:
            threads = int(threads)
        except ValueError:
            raise ConfigError(f"target spec {text!r}: threads must be a whole number, got {threads!r}") from None
        if threads <= 0:
            raise ConfigError(f"target spec {text!r}: threads must be positive, got {threads}")
    spec = TargetSpec(uri, values.get("delegate"), threads, values.get("name", ""))
    if spec.delegate is not None:
        from device_agent.runtime import parse_delegate

        try:
            parse_delegate(spec.delegate)
        except ValueError as exc:
            raise ConfigError(f"target spec {text!r}: {exc}") from None
    return spec


#: The host itself, default delegate: where the original model runs unless told otherwise.
LOCAL_TARGET = TargetSpec("local:")
