"""A campaign's settings: the ``dflare run`` flags, loadable from a TOML file.

A TOML file holds the same keys as the flags (``max_queries`` or ``max-queries``), at the top level
or under a ``[campaign]`` table; relative paths in it are relative to the file. Flags given on the
command line override the file. Every validation error is a :class:`host.errors.ConfigError` naming
the field.

Example ``campaign.toml``::

    original = "models/digits28-float32.tflite"
    compressed = "models/digits28-int8.tflite"
    seeds = "seeds/digits28.npz"
    target = "grpc://127.0.0.1:50051"
    algo = "dflare"
    max_queries = 5000
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from host.errors import ConfigError
from host.records import canonical_json
from host.search import ALGORITHMS, SEARCH_REVISIONS
from host.search.engine import DEFAULT_MAX_QUERIES, MIN_VERIFY_RUNS
from host.search.engine import VERIFY_RUNS as DEFAULT_RERUNS
from host.toml_file import read_toml, resolve_path, unknown_key_hint

#: Identity fields added after campaign directories were written, with their defaults: a campaign
#: at the default keeps the identity it had before the field existed.
LATER_FIELD_DEFAULTS: dict[str, Any] = {"ignore_ties": False}

#: Minimization queries per triggering input (``host.search.minimize.MAX_MINIMIZE_QUERIES``).
DEFAULT_MINIMIZE_MAX_QUERIES = 2000

#: How a setting's TOML/flag value is read: the field's kind (see ``_coerce``).
KINDS = ("path", "int", "float", "floats", "bool", "str")


def setting(kind: str, help: str, default: Any = dataclasses.MISSING, identity: bool = True,
            metavar: str | None = None, toggle: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a campaign setting once: its kind, its ``--flag`` help, and whether it is part of the identity.

    The field name is the TOML key and, with dashes, the flag (``max_queries`` -> ``--max-queries``).

    Args:
        kind: one of :data:`KINDS`; ``floats`` accepts ``--mean 1 2 3``, ``--mean 1,2,3`` and TOML lists.
        help: the flag's help text.
        default: the value when neither the file nor a flag gives one (none: required).
        identity: the setting changes what the campaign computes, so a resume with another value is refused.
            Not: where files live (their contents are compared by digest), where output goes,
            credentials, what the exit code does, minimization (after the search, never changes it) and
            the host threads that mutate a step's candidates.
        metavar: the flag's value name in ``--help``.
        toggle: a boolean that has ``--x`` and ``--no-x`` (else a bool is a plain ``--x`` switch).
        choices: the values a ``str`` setting may take (checked by argparse too).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}")
    metadata = {"kind": kind, "help": help, "identity": identity, "metavar": metavar, "toggle": toggle,
                "choices": choices}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class CampaignConfig:
    """Everything ``dflare run`` needs, each setting declared once with :func:`setting`.

    A field's name is its TOML key and, with dashes, its ``dflare run`` flag; its metadata holds its
    kind, its help text and whether it belongs to the campaign's identity. ``target`` and
    ``reference_target`` also accept ``dflare compare``'s ``URI,delegate=D,threads=N`` form.
    A query is one image through one model; ``max_queries`` counts them per seed.
    """

    original: Path = setting("path", "the original (float) .tflite model", identity=False)
    compressed: Path = setting("path", "the compressed .tflite model under test", identity=False)
    seeds: Path = setting("path", ".npz with x (uint8 NHWC) and optional y, or a folder of PNG/JPEG",
                          identity=False)
    target: str = setting("str", "where the compressed model runs: local: (default), grpc://HOST:PORT, "
                          "grpcs://HOST:PORT (TLS), adb://SERIAL; options as URI,delegate=D,threads=N", "local:",
                          metavar="URI")
    reference_target: str = setting("str", "where the original model runs (default local:)", "local:",
                                    metavar="URI")
    algo: str = setting("str", "search algorithm (default dflare)", "dflare", choices=ALGORITHMS)
    max_queries: int | None = setting("int", f"query budget per seed (default {DEFAULT_MAX_QUERIES})",
                                      DEFAULT_MAX_QUERIES, metavar="N")
    timeout_s: float | None = setting("float", "time budget per seed in seconds", None, metavar="S")
    seed: int = setting("int", "random seed of the campaign (default 0)", 0, metavar="N")
    out: Path = setting("path", "output directory (default dflare-out); rerun to resume", Path("dflare-out"),
                        identity=False, metavar="DIR")
    # XNNPACK: TFLite's default CPU path, and batch-invariant, so a seed's search is the same in a
    # batch as alone (the builtin "cpu" kernels round float rows by their position in the batch).
    delegate: str = setting("str", "the compressed model's delegate: xnnpack (default: TFLite's own CPU path), "
                            "cpu (builtin kernels), ref, gpu, nnapi, external:/path/lib.so", "xnnpack", metavar="D")
    reference_delegate: str = setting("str", "the original model's delegate (default xnnpack)", "xnnpack",
                                      metavar="D")
    threads: int | None = setting("int", "interpreter threads for both models", None, metavar="N")
    mutation_threads: int | None = setting(
        "int", "host threads for a step's mutations (default: one per CPU, at most 8; only batches of large "
        "images split; the results are the same)", None, identity=False, metavar="N")
    mean: tuple[float, ...] | None = setting("floats", "per-channel mean, overriding the model's metadata "
                                             "(1 2 3 or 1,2,3)", None)
    std: tuple[float, ...] | None = setting("floats", "per-channel std, overriding the model's metadata", None)
    scale: float | None = setting("float", "pixel scale (input = pixel * scale), overriding the metadata", None)
    resize: bool = setting("bool", "resize folder images to the model's input size (else another size is an "
                           "error)", False)
    limit: int | None = setting("int", "use only the first N seeds", None, metavar="N")
    reruns: int = setting("int", f"re-runs confirming each triggering input (default {DEFAULT_RERUNS})",
                          DEFAULT_RERUNS, metavar="N")
    token_file: Path | None = setting("path", "agent token for grpc:// targets (else $DFLARE_TOKEN)", None,
                                      identity=False, metavar="F")
    tls_ca_file: Path | None = setting("path", "PEM root certificate(s) that verify the agent's TLS certificate "
                                       "(turns TLS on; grpcs:// uses the system's roots)", None, identity=False,
                                       metavar="PEM")
    tls_server_name: str | None = setting("str", "the name the agent's TLS certificate was issued to, when not "
                                          "the URI's host", None, identity=False, metavar="NAME")
    connect_timeout_s: float | None = setting("float", "how long to wait for an agent to answer before giving up "
                                              "(exit code 3)", None, identity=False, metavar="S")
    fail_on_deviation: bool = setting("bool", "exit with code 1 when a triggering input is found (for CI gates)",
                                      False, identity=False)
    minimize: bool = setting("bool", "shrink each triggering input toward its seed while it still triggers "
                             "(default on; the raw and the minimized input are both stored)", True, identity=False,
                             toggle=True)
    minimize_max_queries: int = setting("int", "minimization queries per triggering input (default "
                                        f"{DEFAULT_MINIMIZE_MAX_QUERIES})", DEFAULT_MINIMIZE_MAX_QUERIES,
                                        identity=False, metavar="N")
    max_linf: int | None = setting("int", "keep every searched input within N grey levels of its seed (mutants "
                                   "are clipped back)", None, metavar="N")
    min_ssim: float | None = setting("float", "reject mutants whose SSIM to their seed is below X (each rejection "
                                     "costs 2 queries)", None, metavar="X")
    ignore_ties: bool = setting("bool", "count a deviation only when both models' top-1 labels are unique (an int8 "
                                "output often ties two classes, and argmax then picks the lower one)", False)

    def __post_init__(self) -> None:
        _validate(self)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_sources(cls, toml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
                     ) -> CampaignConfig:
        """Build a config from a TOML file (optional) and flag values (``None`` values are "not given").

        Args:
            toml_path: a campaign TOML file, or ``None``.
            overrides: flag values keyed by field name; they win over the file.

        Returns:
            The validated config.

        Raises:
            ConfigError: the file is missing or not TOML, a key is unknown, a value has the wrong type,
                or a required field (original, compressed, seeds) is missing.
        """
        values: dict[str, Any] = {}
        if toml_path is not None:
            values.update(load_toml(toml_path))
        for key, value in (overrides or {}).items():
            if value is not None:
                values[_field_name(key, "flag")] = value
        _split_target_specs(values)
        missing = [name for name in ("original", "compressed", "seeds") if name not in values]
        if missing:
            flags = ", ".join("--" + name for name in missing)
            raise ConfigError(f"missing required setting(s) {', '.join(missing)}: give {flags} or set them in --config")
        return cls(**{name: _coerce(name, value) for name, value in values.items()})

    # -- views --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (paths as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def identity(self) -> dict[str, Any]:
        """The fields that define what a campaign computes; a store refuses to resume when they change."""
        identity = {k: v for k, v in self.to_dict().items() if k not in NON_IDENTITY_FIELDS}
        # Fields added after campaign directories existed: at their default they stay out of the
        # identity, so a directory written before them resumes.
        for name, default in LATER_FIELD_DEFAULTS.items():
            if identity.get(name) == default:
                identity.pop(name, None)
        # The algorithm's revision, from its first change on (revision 1 adds nothing, so a campaign
        # of an unchanged algorithm resumes): an earlier version's results are not mixed with these.
        revision = SEARCH_REVISIONS.get(self.algo, 1)
        if revision > 1:
            identity["search_revision"] = revision
        return identity

    def canonical_json(self) -> str:
        """The identity as canonical JSON (sorted keys, no spaces): equal configs give equal strings."""
        return canonical_json(self.identity())

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def replace(self, **changes: Any) -> CampaignConfig:
        return dataclasses.replace(self, **changes)


#: The settings by name, each declared once above with :func:`setting`.
_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(CampaignConfig)}
#: Settings that may change on resume (see ``setting``'s ``identity``).
NON_IDENTITY_FIELDS = frozenset(name for name, f in _FIELDS.items() if not f.metadata["identity"])


def setting_fields() -> list[dataclasses.Field]:
    """Every campaign setting in declaration order (the CLI builds its flags from them)."""
    return list(_FIELDS.values())


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a campaign TOML file into field values, resolving relative paths against the file's folder.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or has an unknown key.
    """
    path = Path(path)
    data = read_toml(path, "campaign file")
    table = data["campaign"] if isinstance(data.get("campaign"), dict) else data
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = _field_name(key, f"key in {path}")
        if _FIELDS[name].metadata["kind"] == "path" and isinstance(value, str):
            value = str(resolve_path(value, path.parent))
        values[name] = value
    return values


def _split_target_specs(values: dict[str, Any]) -> None:
    """Accept ``dflare compare``'s ``URI,delegate=D,threads=N`` form for target and reference_target."""
    for uri_key, delegate_key in (("target", "delegate"), ("reference_target", "reference_delegate")):
        text = values.get(uri_key)
        if not isinstance(text, str) or "," not in text:
            continue
        from host.targets.spec import parse_target_spec

        spec = parse_target_spec(text)
        values[uri_key] = spec.uri
        if spec.delegate is not None:
            values[delegate_key] = spec.delegate
        if spec.threads is not None:
            values["threads"] = spec.threads


def _field_name(key: str, where: str) -> str:
    names = list(_FIELDS)
    name = key.replace("-", "_")
    if name not in names:
        raise ConfigError(f"unknown campaign setting {key!r} ({where}){unknown_key_hint(name, names)}")
    return name


def _coerce(name: str, value: Any) -> Any:
    """Convert a TOML/flag value to the field's declared kind, naming the field on failure."""
    kind = _FIELDS[name].metadata["kind"]
    try:
        if kind == "path":
            if not isinstance(value, (str, Path)):
                raise TypeError("expected a path")
            return Path(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError("expected a number")
            return float(value)
        if kind == "floats":  # 0.5 | "1,2,3" | "1 2 3" | [1, 2, 3] | ["1,2", "3"] (flags as TFLite's tools give them)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return (float(value),)
            parts = [value] if isinstance(value, str) else list(value)
            return tuple(float(v) for part in parts for v in str(part).replace(",", " ").split())
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"campaign setting {name}: {exc} (got {value!r})") from None


def _validate(cfg: CampaignConfig) -> None:
    def bad(name: str, msg: str) -> ConfigError:
        return ConfigError(f"campaign setting {name}: {msg} (got {getattr(cfg, name)!r})")

    if cfg.algo not in ALGORITHMS:
        raise bad("algo", f"unknown algorithm; choose one of {', '.join(ALGORITHMS)}")
    if cfg.max_queries is not None and cfg.max_queries <= 0:
        raise bad("max_queries", "must be a positive number of queries")
    for name in ("timeout_s", "connect_timeout_s"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise bad(name, "must be a positive number of seconds")
    if cfg.max_queries is None and cfg.timeout_s is None:
        raise bad("max_queries", "a campaign needs a budget: set max_queries, timeout_s, or both")
    for name in ("threads", "mutation_threads"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise bad(name, "must be a positive thread count")
    if cfg.limit is not None and cfg.limit <= 0:
        raise bad("limit", "must be a positive number of seeds")
    if cfg.reruns < MIN_VERIFY_RUNS:  # the engine's own limit, checked before anything is stored
        raise bad("reruns", f"must be at least {MIN_VERIFY_RUNS}: every triggering input is re-run to confirm it")
    if cfg.minimize_max_queries < 2:
        raise bad("minimize_max_queries", "must be at least 2 (one candidate on both models)")
    if cfg.max_linf is not None and not 0 <= cfg.max_linf <= 255:
        raise bad("max_linf", "must be 0..255 grey levels")
    if cfg.min_ssim is not None and not -1.0 < cfg.min_ssim <= 1.0:
        raise bad("min_ssim", "must be in (-1, 1]; 1 means identical to the seed")
    if cfg.seed < 0:
        raise bad("seed", "must be a non-negative integer")
    if cfg.scale is not None and (cfg.mean is not None or cfg.std is not None):
        raise bad("scale", "give either scale or mean/std, not both")
    if cfg.scale is not None and cfg.scale <= 0:
        raise bad("scale", "must be positive")
    if cfg.std is not None and any(s == 0 for s in cfg.std):
        raise bad("std", "values must be non-zero")
    for name in ("target", "reference_target"):
        uri = getattr(cfg, name)
        if not (uri == "local:" or uri.startswith(("grpc://", "grpcs://", "adb://"))):
            raise bad(name, "expected local:, grpc://HOST:PORT, grpcs://HOST:PORT (TLS) or adb://SERIAL")
    from device_agent.runtime import parse_delegate

    for name in ("delegate", "reference_delegate"):
        try:
            parse_delegate(getattr(cfg, name))
        except ValueError as exc:
            raise bad(name, str(exc)) from None
