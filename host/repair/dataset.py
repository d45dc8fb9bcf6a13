"""The repair set: a campaign's triggering inputs, labelled by the original model, plus the seeds.

Reads a ``dflare run`` output directory (its ``campaign.sqlite``): the stored config names the models
and seeds, each triggering input's record holds its exact pixels and the original model's label.
:func:`split_triggers` sets part of the triggering inputs aside (held out, to measure the repair),
deterministically and by seed, so no held-out input shares a seed with a repair input.
:func:`export_repair_set` writes the set in plain formats for users who fine-tune in their own pipeline.

No TensorFlow here: everything in this module runs with the base install.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from host.artifacts import png_bytes
from host.campaign.config import CampaignConfig
from host.errors import ConfigError, ModelError, RepairError, SeedError
from host.figures import figures
from host.search.results import SeedStatus
from host.seeds import SeedSet, load_seeds
from host.store import CampaignStore

#: Source tags in the repair set (``source`` column of labels.csv and the npz).
SOURCE_TRIGGER = "trigger"
SOURCE_SEED = "seed"

#: Default share of triggering inputs held out to measure the repair: half, so the before/after
#: figures rest on as many inputs as the fine-tuning sees.
DEFAULT_HOLDOUT_FRACTION = 0.5

REPAIR_SET_NPZ = "repair_set.npz"
REPAIR_SET_DIR = "repair_set"
LABELS_CSV = "labels.csv"
HELD_OUT_NPZ = "held_out.npz"


@dataclass(frozen=True)
class TriggeringInput:
    """One reproduced triggering input: its pixels and both models' labels as the campaign saw them."""

    seed_index: int
    n: int
    image: np.ndarray
    label_original: int
    label_compressed: int


@dataclass(frozen=True)
class CampaignData:
    """What repair needs from a campaign directory.

    Attributes:
        directory: the campaign's output directory.
        config: the campaign's settings, with any paths the caller overrode.
        triggers: every reproduced triggering input (flaky ones are left out), by seed index.
        seeds: the campaign's seed images (checked against the stored digest).
        figures: the campaign's success rate and cost figures (``host.figures.figures``, as a dict).
        model_digests: sha256 of the campaign's models, by role.
    """

    directory: Path
    config: CampaignConfig
    triggers: list[TriggeringInput]
    seeds: SeedSet
    figures: dict[str, Any]
    model_digests: dict[str, str]


@dataclass(frozen=True)
class RepairSet:
    """Images and labels to fine-tune on: ``x`` uint8 NHWC, ``y`` int64, ``source`` and ``seed_index`` per image."""

    x: np.ndarray
    y: np.ndarray
    source: np.ndarray
    seed_index: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def count(self, source: str) -> int:
        return int((self.source == source).sum())


def load_campaign(directory: str | Path, seeds: Path | None = None, original: Path | None = None,
                  compressed: Path | None = None) -> CampaignData:
    """Read a campaign directory's store, triggering inputs and seeds.

    Args:
        directory: a ``dflare run --out`` directory.
        seeds: the seed file or folder, if not where the campaign's config says (e.g. another cwd).
        original: the original .tflite, if not where the config says.
        compressed: the compressed .tflite, if not where the config says.

    Raises:
        CampaignError: the directory holds no campaign store.
        RepairError: the campaign has no reproduced triggering input.
        SeedError: the seeds are missing or are not the campaign's seeds.
        ModelError: a model file is missing or differs from the one the campaign tested.
    """
    directory = Path(directory)
    with CampaignStore.open_existing(directory) as store:
        stored = store.config_dict()
        records = store.outcomes()
        inputs = store.inputs()
        seeds_digest = store.meta("seeds_sha256")
        digests = store.model_digests()
    overrides = {k: v for k, v in (("seeds", seeds), ("original", original), ("compressed", compressed)) if v}
    try:
        config = CampaignConfig.from_sources(None, {**stored, **overrides})
    except ConfigError as exc:
        raise RepairError(f"{directory}: the stored campaign config cannot be read ({exc})") from None
    triggers = [TriggeringInput(r.seed_index, r.n, np.asarray(r.image, np.uint8), r.label_original, r.label_compressed)
                for r in inputs if r.status is SeedStatus.triggered]
    fig = figures(records).to_dict()
    if not triggers:
        raise RepairError(
            f"the campaign in {directory} has no triggering inputs ({fig['seeds']} seed(s) searched, "
            f"{fig['flaky']} flaky): nothing to repair with. Run a longer campaign (--max-queries) or more seeds"
        )
    for role, path in (("original", config.original), ("compressed", config.compressed)):
        check_model_file(path, role, digests.get(role))
    seed_set = _load_campaign_seeds(config, triggers[0].image.shape, seeds_digest)
    return CampaignData(directory, config, triggers, seed_set, fig, digests)


def check_model_file(path: Path, role: str, digest: str | None) -> None:
    """Check that a model file exists and is the one the campaign tested (by sha256).

    Raises:
        ModelError: the file is missing, or its contents differ from the campaign's model.
    """
    import hashlib

    flag = f"--{role}"
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"the campaign's {role} model {path} cannot be read ({exc.strerror}); "
                         f"give its current path with {flag}") from None
    actual = hashlib.sha256(content).hexdigest()
    if digest and actual != digest:
        raise ModelError(f"{path} is not the {role} model the campaign tested (sha256 {actual[:12]}, "
                         f"campaign {digest[:12]}); give the right file with {flag}")


def _load_campaign_seeds(config: CampaignConfig, image_shape: tuple[int, ...], digest: str | None) -> SeedSet:
    try:
        seeds = load_seeds(config.seeds, tuple(image_shape), resize=config.resize, limit=config.limit)
    except SeedError as exc:
        raise SeedError(f"{exc} (the campaign's seeds; give their current path with --seeds)") from None
    if digest and seeds.digest() != digest:
        raise SeedError(f"{config.seeds} are not the seeds the campaign used (sha256 {seeds.digest()[:12]}, "
                        f"campaign {digest[:12]}); give the campaign's seeds with --seeds")
    return seeds


def split_triggers(triggers: list[TriggeringInput], holdout_fraction: float, seed: int
                   ) -> tuple[list[TriggeringInput], list[TriggeringInput]]:
    """Split triggering inputs into (repair, held-out) parts, by seed and deterministically.

    The seed indices are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(holdout_fraction * seeds)`` are held out (at least one, and at least one left for
    repair, when there are two seeds or more and the fraction is above zero).

    Raises:
        ConfigError: a fraction outside [0, 1).
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ConfigError(f"--holdout-fraction must be in [0, 1), got {holdout_fraction}")
    groups = sorted({t.seed_index for t in triggers})
    order = np.random.default_rng(seed).permutation(len(groups))
    held = int(round(holdout_fraction * len(groups)))
    if holdout_fraction > 0 and len(groups) >= 2:
        held = min(max(held, 1), len(groups) - 1)
    held_seeds = {groups[i] for i in order[:held]}
    repair = [t for t in triggers if t.seed_index not in held_seeds]
    held_out = [t for t in triggers if t.seed_index in held_seeds]
    return repair, held_out


def build_repair_set(triggers: list[TriggeringInput], seed_images: np.ndarray, seed_labels: np.ndarray,
                     trigger_copies: int = 1) -> RepairSet:
    """The fine-tuning set: each triggering input labelled with the original model's label, plus the seeds.

    Args:
        triggers: the repair part of the triggering inputs.
        seed_images: uint8 (N, H, W, C) seeds, kept so the fine-tuned model keeps its accuracy.
        seed_labels: the seeds' labels (dataset labels, or the original model's predictions).
        trigger_copies: how many times each triggering input appears (weights them against the seeds;
            0 leaves them out, for an ablation).

    Raises:
        ConfigError: negative ``trigger_copies``, or labels that do not match the seeds.
    """
    if trigger_copies < 0:
        raise ConfigError(f"trigger copies must be 0 or more, got {trigger_copies}")
    if len(seed_labels) != len(seed_images):
        raise ConfigError(f"{len(seed_labels)} seed labels for {len(seed_images)} seed images")
    shape = tuple(seed_images.shape[1:])
    images = [t.image.reshape(shape) for t in triggers for _ in range(trigger_copies)]
    x = np.concatenate([np.asarray(images, np.uint8).reshape(-1, *shape), np.asarray(seed_images, np.uint8)])
    y = np.concatenate([np.asarray([t.label_original for t in triggers for _ in range(trigger_copies)], np.int64),
                        np.asarray(seed_labels, np.int64)])
    source = np.asarray([SOURCE_TRIGGER] * len(images) + [SOURCE_SEED] * len(seed_images))
    seed_index = np.concatenate([np.asarray([t.seed_index for t in triggers for _ in range(trigger_copies)], np.int64),
                                 np.arange(len(seed_images), dtype=np.int64)])
    return RepairSet(x, y, source, seed_index)


def export_repair_set(repair_set: RepairSet, out_dir: str | Path) -> dict[str, Path]:
    """Write the repair set as ``repair_set.npz`` and ``repair_set/`` (one PNG per image + labels.csv).

    The npz holds ``x`` (uint8 NHWC), ``y`` (int64), ``source`` (``trigger``/``seed``) and ``seed_index``;
    it loads with ``numpy.load(path)`` (no pickle). The PNGs are lossless (they decode to the same
    pixels); labels.csv has the columns ``file,label,source,seed_index``. A triggering input repeated
    for weighting is written once to the folder and kept repeated in the npz.

    Returns:
        ``{"npz": ..., "folder": ..., "labels_csv": ...}``.
    """
    out_dir = Path(out_dir)
    folder = out_dir / REPAIR_SET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    npz = out_dir / REPAIR_SET_NPZ
    np.savez_compressed(npz, x=repair_set.x, y=repair_set.y, source=repair_set.source,
                        seed_index=repair_set.seed_index)
    rows = []
    per_seed: dict[tuple[str, int], int] = {}
    for k in range(len(repair_set)):
        source, index = str(repair_set.source[k]), int(repair_set.seed_index[k])
        if k and _same_row(repair_set, k - 1, k):
            continue  # a copy made for weighting
        j = per_seed[(source, index)] = per_seed.get((source, index), -1) + 1
        name = f"{source}_{index:05d}_{j}.png"
        (folder / name).write_bytes(png_bytes(repair_set.x[k]))
        rows.append((name, int(repair_set.y[k]), source, index))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("file", "label", "source", "seed_index"))
    writer.writerows(rows)
    labels = folder / LABELS_CSV
    labels.write_text(buf.getvalue())
    return {"npz": npz, "folder": folder, "labels_csv": labels}


def _same_row(repair_set: RepairSet, a: int, b: int) -> bool:
    return (repair_set.source[a] == repair_set.source[b] and repair_set.seed_index[a] == repair_set.seed_index[b]
            and np.array_equal(repair_set.x[a], repair_set.x[b]))


def export_held_out(held_out: list[TriggeringInput], out_dir: str | Path) -> Path:
    """Write the held-out triggering inputs as ``held_out.npz`` (x, label_original, label_compressed, seed_index)."""
    path = Path(out_dir) / HELD_OUT_NPZ
    shape = held_out[0].image.shape if held_out else (0, 0, 0)
    np.savez_compressed(
        path,
        x=np.asarray([t.image for t in held_out], np.uint8).reshape(-1, *shape),
        label_original=np.asarray([t.label_original for t in held_out], np.int64),
        label_compressed=np.asarray([t.label_compressed for t in held_out], np.int64),
        seed_index=np.asarray([t.seed_index for t in held_out], np.int64),
    )
    return path
