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
import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from host.errors import ConfigError
from host.records import canonical_json
from host.search import ALGORITHMS
from host.search.engine import DEFAULT_MAX_QUERIES, MIN_VERIFY_RUNS
from host.search.engine import VERIFY_RUNS as DEFAULT_RERUNS
from host.toml_file import read_toml

#: Fields that do not change what a campaign computes, so resuming with other values is allowed:
#: where files live (their contents are compared by digest), where output goes, credentials, and
#: what the exit code does.
#: Minimization runs after the search and never changes its results, so it may change on resume too;
#: nor do the host threads that mutate a step's candidates.
NON_IDENTITY_FIELDS = frozenset({"original", "compressed", "seeds", "out", "token_file", "fail_on_deviation",
                                 "connect_timeout_s", "minimize", "minimize_max_queries", "mutation_threads"})

#: Identity fields added after campaign directories were written, with their defaults: a campaign
#: at the default keeps the identity it had before the field existed.
LATER_FIELD_DEFAULTS: dict[str, Any] = {"ignore_ties": False}

#: Minimization queries per triggering input (``host.search.minimize.MAX_MINIMIZE_QUERIES``).
DEFAULT_MINIMIZE_MAX_QUERIES = 2000

_PATH_FIELDS = ("original", "compressed", "seeds", "out", "token_file")


@dataclass(frozen=True)
class CampaignConfig:
    """Everything ``dflare run`` needs; field names match the flags (``--max-queries`` -> ``max_queries``).

    Attributes:
        original: the original (float) .tflite model.
        compressed: the compressed .tflite model under test.
        seeds: an .npz with ``x`` (uint8 NHWC) and optional ``y``, or a folder of PNG/JPEG images.
        target: where the compressed model runs (``local:``, ``grpc://HOST:PORT``, ``adb://SERIAL``); the
            sources also accept ``dflare compare``'s ``URI,delegate=D,threads=N`` form.
        reference_target: where the original model runs.
        algo: the search algorithm.
        max_queries: per-seed query budget (one image through one model = one query); ``None``: unlimited.
        timeout_s: per-seed time budget in seconds; ``None``: unlimited.
        seed: the random seed of the whole campaign.
        out: the output directory (store, artifacts, reports).
        delegate: the compressed model's delegate on ``target``.
        reference_delegate: the original model's delegate on ``reference_target``.
        threads: interpreter threads for both models (``None``: the runtime's default).
        mutation_threads: host threads a step's mutations may be split over (``None``: one per CPU, at
            most 8); only batches of large images split, and the results are the same.
        mean: per-channel mean for preprocessing, overriding model metadata.
        std: per-channel std for preprocessing, overriding model metadata.
        scale: shorthand for ``mean=0, std=1/scale`` (e.g. ``scale = 0.00392156`` maps 0..255 to 0..1).
        resize: resize folder images to the model's input size instead of rejecting other sizes.
        limit: search only the first N seeds of the file or folder.
        reruns: re-runs that confirm a triggering input.
        token_file: a file holding the agent's token (else ``$DFLARE_TOKEN``).
        connect_timeout_s: how long to wait for an agent to answer (``None``: the client's default).
        fail_on_deviation: exit with code 1 when a triggering input was found (for CI gates).
        minimize: shrink each triggering input toward its seed after the search (stored next to the raw one).
        minimize_max_queries: minimization query budget per triggering input (counted apart from the search).
        max_linf: keep every searched input within this many grey levels of its seed (projection); ``None``: off.
        min_ssim: reject mutants whose SSIM to their seed is below this; ``None``: off.
        ignore_ties: count a deviation only when both models' top-1 labels are unique (an int8 output
            often ties two classes, and argmax then picks the lower one); default: DFlare's criterion.
    """

    original: Path
    compressed: Path
    seeds: Path
    target: str = "local:"
    reference_target: str = "local:"
    algo: str = "dflare"
    max_queries: int | None = DEFAULT_MAX_QUERIES
    timeout_s: float | None = None
    seed: int = 0
    out: Path = Path("dflare-out")
    # XNNPACK: TFLite's default CPU path, and batch-invariant, so a seed's search is the same in a
    # batch as alone (the builtin "cpu" kernels round float rows by their position in the batch).
    delegate: str = "xnnpack"
    reference_delegate: str = "xnnpack"
    threads: int | None = None
    mutation_threads: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    resize: bool = False
    limit: int | None = None
    reruns: int = DEFAULT_RERUNS
    token_file: Path | None = None
    connect_timeout_s: float | None = None
    fail_on_deviation: bool = field(default=False)
    minimize: bool = True
    minimize_max_queries: int = DEFAULT_MINIMIZE_MAX_QUERIES
    max_linf: int | None = None
    min_ssim: float | None = None
    ignore_ties: bool = False

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
        return identity

    def canonical_json(self) -> str:
        """The identity as canonical JSON (sorted keys, no spaces): equal configs give equal strings."""
        return canonical_json(self.identity())

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def replace(self, **changes: Any) -> CampaignConfig:
        return dataclasses.replace(self, **changes)


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
        if name in _PATH_FIELDS and isinstance(value, str) and not Path(value).is_absolute():
            value = str(path.parent / value)
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
    names = [f.name for f in dataclasses.fields(CampaignConfig)]
    name = key.replace("-", "_")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
        raise ConfigError(f"unknown campaign setting {key!r} ({where}){hint}")
    return name


def _coerce(name: str, value: Any) -> Any:
    """Convert TOML/flag values to the field's type, naming the field on failure."""
    try:
        if name in _PATH_FIELDS:
            if not isinstance(value, (str, Path)):
                raise TypeError("expected a path")
            return Path(value)
        if name in ("max_queries", "threads", "mutation_threads", "limit", "reruns", "seed", "minimize_max_queries",
                    "max_linf"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError("expected an integer")
            return int(value)
        if name in ("timeout_s", "scale", "connect_timeout_s", "min_ssim"):
            if isinstance(value, bool):
                raise TypeError("expected a number")
            return float(value)
        if name in ("mean", "std"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return (float(value),)
            if isinstance(value, str):
                return tuple(float(v) for v in value.replace(",", " ").split())
            return tuple(float(v) for v in value)
        if name in ("resize", "fail_on_deviation", "minimize", "ignore_ties"):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if name in ("target", "reference_target", "algo", "delegate", "reference_delegate"):
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"campaign setting {name}: {exc} (got {value!r})") from None
    return value


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
        if not (uri == "local:" or uri.startswith(("grpc://", "adb://"))):
            raise bad(name, "expected local:, grpc://HOST:PORT or adb://SERIAL")
    from device_agent.runtime import parse_delegate

    for name in ("delegate", "reference_delegate"):
        try:
            parse_delegate(getattr(cfg, name))
        except ValueError as exc:
            raise bad(name, str(exc)) from None
