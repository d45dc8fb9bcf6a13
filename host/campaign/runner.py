"""Run a campaign: load models and seeds, resume from the store, search, store each seed, write reports.

The lifecycle, once: models are read and checked (both TFLite, same input shape and classes) ->
seeds are read and checked against that shape -> the store is opened (a different stored campaign is
refused) -> this run and its targets are recorded -> the requested seed list is recorded (once) ->
unfinished seeds get the agreement check (seeds the two models already disagree on, or that
mismatch their label, are stored as ``skipped``) -> the agreeing ones are searched, and each result
is stored in one transaction the moment it arrives, then its artifacts are written -> with
``minimize`` on, every stored triggering input without a minimized version is minimized and stored
(``minimizing.py``; this also completes inputs an interrupted run left) -> the reports are rebuilt
from the store. On Ctrl-C the reports are still written from what finished, and the
interrupt is re-raised; a SIGKILL loses at most the seeds in flight, never a stored one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from device_agent.errors import ModelFormatError
from device_agent.runtime import Preprocessing, check_tflite_bytes
from host import artifacts
from host.campaign.config import CampaignConfig
from host.campaign.minimizing import bound_of, minimize_pending
from host.campaign.progress import ProgressReporter, default_progress
from host.errors import CampaignError, ModelError, OutputDirError, SeedError
from host.records import RequestedSeed
from host.report.writer import ReportPaths, write_reports
from host.search.results import SeedResult, SeedStatus
from host.seeds import SeedSet, load_seeds
from host.store import CampaignStore
from host.targets.base import ModelSpec, Session, Target

log = logging.getLogger(__name__)

#: Seeds per batch in the agreement check: 64 images of 32x32x3 are 192 KiB, well under gRPC's
#: default 4 MiB message limit, and big enough to amortize a round trip to a device.
AGREEMENT_BATCH = 64

#: The lock file that keeps two ``dflare run`` processes from writing one output directory.
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class SearchJob:
    """What the search engine gets: two loaded models and the seeds left to search.

    ``seed_indices[i]`` is the campaign index of ``images[i]``; results must carry campaign indices.
    """

    original: Session
    compressed: Session
    images: np.ndarray
    seed_indices: list[int]
    labels: list[int]
    config: CampaignConfig
    original_target: Target | None = None
    compressed_target: Target | None = None
    #: Both models' probabilities on ``images`` from the agreement check, so the search does not run
    #: the seeds again (None: the search checks them itself).
    seed_probs: tuple[np.ndarray, np.ndarray] | None = None


#: A search: yields one :class:`SeedResult` per seed of the job, in any order, as each finishes.
SearchFn = Callable[[SearchJob], Iterable[SeedResult]]


def engine_search(job: SearchJob) -> Iterator[SeedResult]:
    """Search through the engine's programmatic API, ``host.search.run`` (the batched lockstep engine).

    Seed ``i``'s random generator derives from ``(config.seed, i)`` with ``i`` its campaign index, so a
    resumed campaign searches each remaining seed exactly as an uninterrupted one would have.

    """
    from host.search import Budget
    from host.search import run as search_run

    cfg = job.config
    yield from search_run(
        job.original, job.compressed, job.images, algo=cfg.algo,
        budget=Budget(max_queries=cfg.max_queries, max_seconds=cfg.timeout_s), rng_seed=cfg.seed,
        labels=job.labels, indices=job.seed_indices, seed_probs=job.seed_probs, verify_runs=cfg.reruns,
        bound=bound_of(cfg),
        ignore_ties=cfg.ignore_ties, mutation_threads=cfg.mutation_threads,
    )


@dataclass
class CampaignOutcome:
    """How a ``run`` ended and what it wrote."""

    status: str  # "completed" or "interrupted"
    reports: ReportPaths
    searched_this_run: int = 0
    skipped_this_run: int = 0
    resumed_from: int = 0  # seeds already finished before this run

    @property
    def summary(self) -> dict[str, Any]:
        return self.reports.summary

    @property
    def triggered(self) -> int:
        return int(self.summary["triggered"])


def read_model(path: Path, role: str, delegate: str, config: CampaignConfig) -> ModelSpec:
    """Read a model file, check it is TFLite, and attach its delegate, threads and preprocessing.

    Raises:
        ModelError: the file is missing, unreadable or not a TFLite model.
    """
    preprocessing = preprocessing_from(config)
    spec = ModelSpec.from_path(path, delegate=delegate, threads=config.threads, preprocessing=preprocessing)
    try:
        check_tflite_bytes(spec.content)
    except ModelFormatError as exc:
        raise ModelError(f"the {role} model {path} is not a TFLite model: {exc}") from None
    return spec


def preprocessing_from(config: CampaignConfig) -> Preprocessing | None:
    """Preprocessing from the config's mean/std/scale, or ``None`` to use the model's metadata."""
    if config.scale is not None:
        return Preprocessing((0.0,), (1.0 / config.scale,))
    if config.mean is not None or config.std is not None:
        return Preprocessing(config.mean or (0.0,), config.std or (1.0,))
    return None


def open_target(uri: str, config: CampaignConfig) -> Target:
    """Build the target for a URI (``local:``, ``grpc://HOST:PORT``, ``adb://SERIAL``) with the config's token file.

    Raises:
        ConfigError: an unknown URI scheme.
    """
    from host.targets import TargetOptions
    from host.targets import open_target as open_uri

    return open_uri(uri, TargetOptions(token_file=config.token_file, connect_timeout_s=config.connect_timeout_s,
                                       tls_ca_file=config.tls_ca_file, tls_server_name=config.tls_server_name))


def _model_view(session: Session, spec: ModelSpec) -> dict[str, Any]:
    view = spec.describe()
    view["input"] = session.input_spec.to_dict()
    if session.delegated_nodes is not None:
        view["delegated_nodes"] = session.delegated_nodes
    if session.cpu_ops is not None:
        view["cpu_ops"] = session.cpu_ops
    return view


class CampaignRunner:
    """Runs one campaign to completion (or interruption), resumable from its store.

    Args:
        config: the campaign's settings.
        force_new: archive a stored campaign with other settings instead of refusing to resume.
        search: the search to run (default: the engine, :func:`engine_search`).
        progress: where progress goes (default: a rich bar on a terminal, log lines otherwise).
        argv: the command line, recorded with the run.
        target_factory: builds a target from a URI (tests may pass already running targets).
    """

    def __init__(
        self,
        config: CampaignConfig,
        force_new: bool = False,
        search: SearchFn | None = None,
        progress: ProgressReporter | None = None,
        argv: Sequence[str] = (),
        target_factory: Callable[[str, CampaignConfig], Target] | None = None,
    ) -> None:
        self.config = config
        self.force_new = force_new
        self.search = search or engine_search
        self.progress = progress or default_progress()
        self.argv = list(argv)
        self.target_factory = target_factory or open_target
        self._labels: dict[int, int] = {}  # seed index -> the label both models agree on

    # -- the lifecycle ------------------------------------------------------------------------
    def run(self) -> CampaignOutcome:
        """Run (or resume) the campaign and write every output.

        Returns:
            How it ended and the reports written.

        Raises:
            ModelError, SeedError, ConfigError: the inputs are unusable (exit code 2).
            TargetUnreachableError: a target cannot be reached (exit code 3).
            CampaignError: the output directory holds another campaign, or is in use.
            KeyboardInterrupt: after the reports of the finished seeds were written.
        """
        cfg = self.config
        original_spec = read_model(cfg.original, "original", cfg.reference_delegate, cfg)
        compressed_spec = read_model(cfg.compressed, "compressed", cfg.delegate, cfg)
        out_dir = prepare_out_dir(Path(cfg.out))
        with contextlib.ExitStack() as stack:
            stack.enter_context(_dir_lock(out_dir))
            targets = self._open_targets(stack)
            original = targets[cfg.reference_target].load(original_spec)
            stack.callback(original.close)
            compressed = targets[cfg.target].load(compressed_spec)
            stack.callback(compressed.close)
            image_shape = _check_models_fit(original, compressed, cfg)
            seeds = load_seeds(cfg.seeds, image_shape, resize=cfg.resize, limit=cfg.limit)
            check_seed_labels(seeds, int(np.prod(compressed.output_specs[0].shape[1:])), cfg.seeds)
            store = CampaignStore.create_or_resume(
                out_dir, cfg, {"original": original_spec.sha256, "compressed": compressed_spec.sha256},
                seeds.digest(), force_new=self.force_new,
            )
            stack.callback(store.close)
            store.begin_run(self.argv, {
                "compressed": {"uri": cfg.target, "device": targets[cfg.target].info(),
                               "model": _model_view(compressed, compressed_spec)},
                "original": {"uri": cfg.reference_target, "device": targets[cfg.reference_target].info(),
                             "model": _model_view(original, original_spec)},
            })
            store.record_requested(RequestedSeed(i, seeds.label(i), seeds.names[i]) for i in range(len(seeds)))
            return self._run_stored(store, seeds, original, compressed, targets)

    def _open_targets(self, stack: contextlib.ExitStack) -> dict[str, Target]:
        targets: dict[str, Target] = {}
        for uri in dict.fromkeys([self.config.target, self.config.reference_target]):
            target = self.target_factory(uri, self.config)
            stack.callback(target.close)
            targets[uri] = target
        return targets

    def _run_stored(self, store: CampaignStore, seeds: SeedSet, original: Session, compressed: Session,
                    targets: dict[str, Target]) -> CampaignOutcome:
        out_dir = Path(self.config.out)
        finished = store.finished_indices()
        already_triggered = sum(r.triggered for r in store.outcomes())
        pending = [i for i in range(len(seeds)) if i not in finished]
        outcome = CampaignOutcome("interrupted", None, resumed_from=len(finished))  # type: ignore[arg-type]
        self.progress.start(len(seeds), len(finished), already_triggered)
        status = "failed"
        try:
            agreeing, probs = self._agreement_check(store, seeds, pending, original, compressed, outcome)
            if agreeing:
                job = SearchJob(original, compressed, seeds.x[agreeing], agreeing,
                                [self._labels[i] for i in agreeing], self.config,
                                targets[self.config.reference_target], targets[self.config.target],
                                seed_probs=(np.stack([probs[i][0] for i in agreeing]),
                                            np.stack([probs[i][1] for i in agreeing])))
                self._consume(store, seeds, job, outcome)
            if self.config.minimize:
                done = minimize_pending(store, original, compressed, self.config)
                if done:
                    log.info("minimized %d triggering input(s)", done)
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.progress.finish()
            store.end_run(status)
            outcome.status = status
            outcome.reports = write_reports(store, out_dir)
        return outcome

    def _agreement_check(self, store: CampaignStore, seeds: SeedSet, pending: list[int], original: Session,
                         compressed: Session, outcome: CampaignOutcome) -> tuple[list[int], dict[int, tuple]]:
        """Run both models on the pending seeds; store the ones they disagree on as skipped.

        Returns:
            The agreeing seeds' indices, and each one's (original, compressed) probabilities.
        """
        agreeing: list[int] = []
        probs: dict[int, tuple] = {}
        for start in range(0, len(pending), AGREEMENT_BATCH):
            batch = pending[start:start + AGREEMENT_BATCH]
            t0 = time.monotonic()
            probs_o = original.infer(seeds.x[batch])
            probs_c = compressed.infer(seeds.x[batch])
            per_seed_s = (time.monotonic() - t0) / len(batch)
            for k, index in enumerate(batch):
                lo, lc = int(np.argmax(probs_o[k])), int(np.argmax(probs_c[k]))
                y = seeds.label(index)
                reason = ""
                if lo != lc:
                    reason = f"the models disagree on the seed itself (original {lo}, compressed {lc})"
                elif y is not None and lo != y:
                    reason = f"both models say {lo} but the seed's label is {y}"
                if not reason:
                    self._labels[index] = lo
                    agreeing.append(index)
                    probs[index] = (probs_o[k], probs_c[k])
                    continue
                result = SeedResult(index, SeedStatus.skipped, lo if y is None else y, queries=2,
                                    seconds=per_seed_s, algo=self.config.algo, exit_reason=reason,
                                    label_original=lo, label_compressed=lc)
                record = store.record_result(result)
                outcome.skipped_this_run += 1
                self.progress.seed_finished(record)
        return agreeing, probs

    def _consume(self, store: CampaignStore, seeds: SeedSet, job: SearchJob, outcome: CampaignOutcome) -> None:
        wanted = set(job.seed_indices)
        for result in self.search(job):
            if result.seed_index not in wanted:
                raise CampaignError(f"the search returned seed {result.seed_index}, which it was not asked for "
                                    "(or returned it twice)")
            wanted.discard(result.seed_index)
            record = store.record_result(result, seeds.x[result.seed_index])
            if result.image is not None and result.status in (SeedStatus.triggered, SeedStatus.flaky):
                for input_record in store.inputs_of(result.seed_index):
                    artifacts.write_input(self.config.out, input_record)
            outcome.searched_this_run += 1
            self.progress.seed_finished(record)
        if wanted:
            log.warning("the search ended without results for %d seed(s): %s", len(wanted), sorted(wanted)[:20])


def _check_models_fit(original: Session, compressed: Session, cfg: CampaignConfig) -> tuple[int, int, int]:
    shape_o = tuple(int(d) for d in original.input_spec.shape[1:])
    shape_c = tuple(int(d) for d in compressed.input_spec.shape[1:])
    if shape_o != shape_c:
        raise ModelError(f"input shape mismatch: the original model {cfg.original} takes {shape_o} images, "
                         f"the compressed model {cfg.compressed} takes {shape_c}; they must be the same model")
    classes_o = int(np.prod(original.output_specs[0].shape[1:]))
    classes_c = int(np.prod(compressed.output_specs[0].shape[1:]))
    if classes_o != classes_c:
        raise ModelError(f"output mismatch: the original model has {classes_o} classes, the compressed one "
                         f"{classes_c}; they must be the same classifier")
    if len(shape_o) != 3:
        raise ModelError(f"the models take input of shape {shape_o}; expected (H, W, C) images")
    return shape_o  # type: ignore[return-value]


def prepare_out_dir(out_dir: Path) -> Path:
    """Create ``--out`` if missing and check that a campaign can be written there.

    Raises:
        OutputDirError: it names a file, or cannot be created or written (read-only filesystem,
            permissions), with the reason in one line.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} is a file, not a directory: pass a directory (created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create --out {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot write to --out {out_dir} (read-only filesystem or no permission): "
                             "pass a writable directory")
    return out_dir


def check_seed_labels(seeds: SeedSet, classes: int, source: object) -> None:
    """Refuse labels the models cannot output, naming the first bad one (else those seeds would be skipped silently).

    Raises:
        SeedError: a label below 0 or at least ``classes``.
    """
    if seeds.y is None:
        return
    labels = np.asarray(seeds.y).astype(np.int64).reshape(-1)
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        first = int(bad[0])
        raise SeedError(
            f"seed label {int(labels[first])} (seed {first} of {source}) is out of range: the models have "
            f"{classes} classes, so labels are 0..{classes - 1}; {bad.size} seed(s) have such labels"
        )


@contextlib.contextmanager
def _dir_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the output directory (POSIX ``flock``; released by the OS if killed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, documented
        yield
        return
    try:
        fh = open(out_dir / LOCK_NAME, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise OutputDirError(f"cannot write to --out {out_dir}: {exc.strerror or exc}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignError(f"{out_dir} is in use by another dflare run (lock {out_dir / LOCK_NAME}); "
                                "wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
