"""Shrink a triggering input toward its seed while it still triggers (delta debugging, Hypothesis-style).

Given a seed, a triggering mutant and its mutation trace, :func:`minimize` runs these phases, each
a few batched rounds of candidates queried on both models (one batch per model per round):

1. **trace** (ddmin, Zeller & Hildebrandt 2002): replay subsets of the trace's steps (chunks and
   their complements at growing granularity) and keep the smallest subset that still triggers.
   Skipped when the trace does not replay to the mutant (e.g. a search with unknown operators).
2. **blend**: ``round(seed + alpha * (mutant - seed))``. Triggering inputs sit in a thin band where
   the two models' decision boundaries part, so the predicate is not monotonic in alpha; the search
   is for the first alpha where the models stop agreeing on the seed's label (which is monotonic
   in practice): a k-ary search, :data:`BLEND_GRID` factors per round zooming into the bracket,
   keeping the nearest triggering candidate seen.
3. **boundary walk** (HopSkipJump, Chen et al. 2020): from there, estimate the boundary's normal
   from random smooth probes (which side of "both agree on the seed's label" each lands on), step
   along it and line-search back toward the seed; repeat while it gets closer.
4. **regions**: restore seed pixels block by block, halving the block size from half the image
   down to :data:`MIN_BLOCK_PX`: at each size, restoring each changed block alone is tried (one
   batch); the blocks whose restoration still triggers are sorted by how clearly the models then
   disagree, and the longest prefix that still triggers when restored together (prefixes of
   halving length, one batch) is kept. A last line search then shrinks what is left.

"Triggers" means what the search means: the two models' top-1 labels differ (the labels may differ
from the raw input's). Every candidate is a real uint8 image inside the search's perturbation
bound (``bounds.py``; candidates outside it are dropped unqueried), and the result is one of the
queried candidates. It is then re-run ``verify_runs`` times on both models like a search result;
if it does not reproduce, the previous kept candidate is tried, down to the raw input.

Accounting: minimization queries (one image through one model = 1) are counted apart from search
queries: ``queries`` for candidates, ``verify_queries`` for the re-runs; ``max_queries`` caps the
former (a phase stops when the next batch would exceed it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Sequence

import numpy as np

from host.figures import QUERIES_PER_CANDIDATE as QUERIES_PER_IMAGE
from host.search import deviation, distances, mutations
from host.search.bounds import UNBOUNDED, PerturbationBound
from host.search.engine import VERIFY_RUNS
from host.search.results import MutationStep
from host.targets.base import Session

#: Minimization queries per input at most: ~1,000 candidates. Measured on the fixture models
#: (digits28 float32 vs int8), the median L2 reduction was 35% at 1,000 queries and 78% at 2,000: the
#: boundary walk gains most of it and speeds up as its steps go on. Below a search's 5,000 per seed.
MAX_MINIMIZE_QUERIES: int = 2000
#: Blend factors tried per round; 16 per round and 2 rounds resolve alpha to 1/256.
BLEND_GRID: int = 16
BLEND_ROUNDS: int = 2
#: The smallest restored block, in pixels per side. 2: a 28x28 image has at most 196 such blocks, one
#: affordable batch; single pixels would cost up to 784 candidates for a few grey levels of L2.
MIN_BLOCK_PX: int = 2
#: Boundary walk: random probes per normal estimate (HopSkipJump uses ~100; 32 keeps a step at ~70
#: candidates with the line search), their radius as a fraction of the current L2 distance, step sizes
#: tried per step (halving), steps at most, and candidates kept back for the region phase.
GRADIENT_PROBES: int = 32
GRADIENT_RADIUS: float = 0.05
STEP_SIZES: int = 4
BOUNDARY_STEPS: int = 30
BOUNDARY_RESERVE_IMAGES: int = 120
#: The walk's line search: a step lands just past the boundary at about the current distance, so the
#: boundary lies in the segment's outer half; 8 points per round over (0.5, 1] resolve it to 1/128.
BOUNDARY_GRID: int = 8
#: Cell size of the walk's smooth random probes, in pixels (see ``_smooth_noise``).
PROBE_CELL_PX: int = 2
BOUNDARY_LOWEST_ALPHA: float = 0.5
#: Images per inference call: 64 images of 32x32x3 are 192 KiB, far below gRPC's 4 MiB message limit.
MAX_BATCH_IMAGES: int = 64


class MinimizeExit(Enum):
    """Why minimization stopped."""

    finished = "every phase ran to the end"
    max_queries = "the minimization query budget is spent"


@dataclass
class MinimizeResult:
    """A minimized triggering input and what it cost."""

    image: np.ndarray  # uint8 HWC, exactly as queried
    probs_original: np.ndarray
    probs_compressed: np.ndarray
    trace: list[MutationStep]  # the steps phase 1 kept (the image is that replay, then blended/restored)
    queries: int
    verify_queries: int
    reproduced: int
    verify_runs: int
    seconds: float
    before: distances.Distances
    after: distances.Distances
    exit_reason: MinimizeExit
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label_original(self) -> int:
        return int(np.argmax(self.probs_original))

    @property
    def label_compressed(self) -> int:
        return int(np.argmax(self.probs_compressed))

    @property
    def reproducible(self) -> bool:
        return self.reproduced == self.verify_runs

    def info(self) -> dict[str, Any]:
        """A JSON-ready view without the image and probabilities."""
        return {
            "trace": [s.to_dict() for s in self.trace], "queries": self.queries,
            "verify_queries": self.verify_queries, "reproduced": self.reproduced,
            "verify_runs": self.verify_runs, "seconds": self.seconds, "before": self.before.to_dict(),
            "after": self.after.to_dict(), "exit_reason": self.exit_reason.name, "phases": self.phases,
        }


class _OutOfBudget(Exception):
    """The next batch would exceed the minimization budget."""


@dataclass
class _State:
    """The current (smallest so far) triggering candidate."""

    image: np.ndarray
    probs_original: np.ndarray
    probs_compressed: np.ndarray
    trace: list[MutationStep]


def disagreement_margin(probs_original: np.ndarray, probs_compressed: np.ndarray) -> np.ndarray:
    """Per row: how clearly each model prefers its own label over the other's (0 when they agree)."""
    lo, lc = np.argmax(probs_original, axis=-1), np.argmax(probs_compressed, axis=-1)
    rows = np.arange(len(lo))
    return (probs_original[rows, lo] - probs_original[rows, lc]) + (probs_compressed[rows, lc]
                                                                    - probs_compressed[rows, lo])


class Minimizer:
    """Minimizes one triggering input; every model query goes through :meth:`evaluate`.

    Args:
        original: the original model's session.
        compressed: the compressed model's session.
        seed: the seed image, uint8 HWC.
        bound: the search's perturbation bound (candidates outside it are never queried).
        max_queries: minimization query budget (candidates only; re-runs are counted apart).
        verify_runs: re-runs the result must survive.
        clock: a monotonic clock in seconds.
        rng_seed: seeds the boundary walk's random probes (the result is a function of it).
        ignore_ties: the search's criterion: a minimized input must deviate without a top-1 tie.
    """

    def __init__(self, original: Session, compressed: Session, seed: np.ndarray,
                 bound: PerturbationBound = UNBOUNDED, max_queries: int = MAX_MINIMIZE_QUERIES,
                 verify_runs: int = VERIFY_RUNS, clock: Callable[[], float] = time.monotonic,
                 rng_seed: int | Sequence[int] = 0, ignore_ties: bool = False) -> None:
        self.ignore_ties = bool(ignore_ties)
        self.original = original
        self.compressed = compressed
        self.seed = np.ascontiguousarray(seed, dtype=np.uint8)
        self.bound = bound
        self.max_queries = int(max_queries)
        self.verify_runs = int(verify_runs)
        self.clock = clock
        self.rng_seed = rng_seed  # seeds the boundary walk's random probes
        self.seed_label = -1
        self.queries: int = 0
        self.verify_queries: int = 0
        self.exit_reason = MinimizeExit.finished
        self.phases: dict[str, dict[str, Any]] = {}
        self.history: list[_State] = []  # every kept state, oldest first

    # -- querying -----------------------------------------------------------------------------
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs_o, outs_c = [], []
        for start in range(0, len(images), MAX_BATCH_IMAGES):
            chunk = images[start:start + MAX_BATCH_IMAGES]
            outs_o.append(self.original.infer(chunk))
            outs_c.append(self.compressed.infer(chunk))
        return np.concatenate(outs_o), np.concatenate(outs_c)

    def affordable(self) -> int:
        """Candidates the remaining budget pays for."""
        return max(0, (self.max_queries - self.queries) // QUERIES_PER_IMAGE)

    def evaluate(self, images: np.ndarray, phase: str) -> tuple[np.ndarray, np.ndarray]:
        """Query candidates on both models, counting them against the budget.

        Raises:
            _OutOfBudget: the batch would exceed ``max_queries``.
        """
        cost = QUERIES_PER_IMAGE * len(images)
        if self.queries + cost > self.max_queries:
            self.exit_reason = MinimizeExit.max_queries
            raise _OutOfBudget
        self.queries += cost
        self.phases.setdefault(phase, {"queries": 0, "kept": 0})["queries"] += cost
        return self._infer(images)

    def _admissible(self, images: np.ndarray) -> np.ndarray:
        if not self.bound.active:
            return np.ones(len(images), dtype=bool)
        return self.bound.admissible(images, np.broadcast_to(self.seed, images.shape))

    def _keep(self, state: _State, phase: str) -> None:
        self.history.append(state)
        self.phases.setdefault(phase, {"queries": 0, "kept": 0})["kept"] += 1

    def _try(self, images: np.ndarray, phase: str, limit: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                np.ndarray]:
        """Query the admissible, not yet seen candidates; return (rows queried, probs_o, probs_c, triggers).

        With ``limit``, only as many as the budget affords are queried (the first ones).
        """
        keep = self._admissible(images)
        flat = images.reshape(len(images), -1)
        current = self.history[-1].image.reshape(-1)
        keep &= np.any(flat != current, axis=1)
        rows = np.flatnonzero(keep)
        if rows.size:  # drop duplicates (rounding can make blend factors collide)
            first: dict[bytes, int] = {}
            for r in rows:
                first.setdefault(flat[r].tobytes(), int(r))
            rows = np.asarray(sorted(first.values()), dtype=np.int64)
        if limit:
            rows = rows[: self.affordable()]
        if rows.size == 0:
            if self.affordable() == 0:
                self.exit_reason = MinimizeExit.max_queries
                raise _OutOfBudget
            empty = np.zeros((0, 0), np.float32)
            return rows, empty, empty, np.zeros(0, dtype=bool)
        probs_o, probs_c = self.evaluate(images[rows], phase)
        return rows, probs_o, probs_c, deviation.deviates(probs_o, probs_c, self.ignore_ties)

    # -- the phases ---------------------------------------------------------------------------
    def run(self, image: np.ndarray, trace: Sequence[MutationStep], probs_original: np.ndarray,
            probs_compressed: np.ndarray, seed_label: int | None = None) -> MinimizeResult:
        """Minimize one triggering input (which must trigger: it is the search's verified result).

        Args:
            image: the raw triggering input, uint8 HWC.
            trace: its mutation trace from the seed.
            probs_original: the original model's output on it.
            probs_compressed: the compressed model's output on it.
            seed_label: the label both models give the seed (queried when None).

        Returns:
            The smallest re-verified triggering candidate found (the raw input if none reproduces).
        """
        start = self.clock()
        raw = np.ascontiguousarray(image, dtype=np.uint8)
        self.history = [_State(raw, np.asarray(probs_original), np.asarray(probs_compressed), list(trace))]
        try:
            if seed_label is None:
                probs_o, probs_c = self.evaluate(self.seed[None], "seed")
                seed_label = int(np.argmax(probs_o[0]))
            self.seed_label = int(seed_label)
            for name, phase in (("trace", self._trace_phase),
                                ("blend", lambda: self._line_search(self.history[-1], "blend", BLEND_ROUNDS)),
                                ("boundary", self._boundary_phase), ("regions", self._region_phase),
                                ("final_blend", lambda: self._line_search(self.history[-1], "final_blend",
                                                                          BLEND_ROUNDS))):
                phase()
                self.phases.setdefault(name, {"queries": 0, "kept": 0})["l2_after"] = float(
                    self._l2(self.history[-1].image[None])[0])
        except _OutOfBudget:
            pass
        final, reproduced = self._verified()
        return MinimizeResult(
            image=final.image, probs_original=final.probs_original, probs_compressed=final.probs_compressed,
            trace=final.trace, queries=self.queries, verify_queries=self.verify_queries, reproduced=reproduced,
            verify_runs=self.verify_runs, seconds=self.clock() - start,
            before=distances.distances(raw, self.seed), after=distances.distances(final.image, self.seed),
            exit_reason=self.exit_reason, phases=self.phases,
        )

    def _l2(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(distances.l2(images, np.broadcast_to(self.seed, images.shape)), dtype=np.float64)

    def _agree_on_seed(self, probs_o: np.ndarray, probs_c: np.ndarray) -> np.ndarray:
        return (np.argmax(probs_o, axis=-1) == self.seed_label) & (np.argmax(probs_c, axis=-1) == self.seed_label)

    def _keep_if_smaller(self, images: np.ndarray, rows: np.ndarray, probs_o: np.ndarray, probs_c: np.ndarray,
                         hits: np.ndarray, trace: list[MutationStep], phase: str) -> bool:
        """Keep the smallest triggering queried candidate if it is closer to the seed than the current one."""
        if not hits.any():
            return False
        l2s = self._l2(images[rows[hits]])
        k = int(np.argmin(l2s))
        if l2s[k] >= self._l2(self.history[-1].image[None])[0]:
            return False
        j = int(np.flatnonzero(hits)[k])
        self._keep(_State(images[rows[j]], probs_o[j], probs_c[j], trace), phase)
        return True

    def _trace_phase(self) -> None:
        """ddmin over the trace's steps (chunks and complements, queried together)."""
        state = self.history[-1]
        steps = list(state.trace)
        try:
            replayable = bool(steps) and np.array_equal(replay_subsets(self.seed, steps, [list(range(len(steps)))],
                                                                       self.bound)[0], state.image)
        except mutations.MutationError:
            replayable = False
        self.phases["trace"] = {"queries": 0, "kept": 0, "replayable": replayable, "steps_before": len(steps)}
        n = 2
        while replayable and len(steps) >= 2:
            chunks = [c.tolist() for c in np.array_split(np.arange(len(steps)), min(n, len(steps)))]
            subsets = [list(c) for c in chunks]
            complements = [sorted(set(range(len(steps))) - set(c)) for c in chunks] if n > 2 else []
            options = subsets + complements
            images = replay_subsets(self.seed, steps, options, self.bound)
            rows, probs_o, probs_c, hits = self._try(images, "trace")
            if hits.any():
                winners = rows[hits]
                sizes = np.asarray([len(options[r]) for r in winners])
                best = int(np.lexsort((self._l2(images[winners]), sizes))[0])
                r, k = int(winners[best]), int(np.flatnonzero(hits)[best])
                steps = [steps[i] for i in options[r]]
                self._keep(_State(images[r], probs_o[k], probs_c[k], steps), "trace")
                n = 2 if r < len(subsets) else max(n - 1, 2)
            elif n >= len(steps):
                break
            else:
                n = min(2 * n, len(steps))
        self.phases["trace"]["steps_after"] = len(self.history[-1].trace) if replayable else len(steps)

    def _line_search(self, end: _State, phase: str, rounds: int, grid: int = 0, lo: float = 0.0) -> bool:
        """Search the segment seed -> ``end`` for the first point where the models stop agreeing on the seed's
        label (k-ary: ``grid`` points per round, default :data:`BLEND_GRID`, each round zooming into the bracket
        found, starting from ``(lo, 1]``), and keep the nearest triggering point seen if it is closer than the
        current input."""
        delta = end.image.astype(np.float64) - self.seed
        grid = grid or BLEND_GRID
        hi = 1.0
        self.phases.setdefault(phase, {"queries": 0, "kept": 0})
        kept = False
        for _ in range(rounds):
            alphas = lo + (hi - lo) * np.arange(1, grid) / grid
            images = _to_uint8(self.seed + alphas[:, None, None, None] * delta)
            images = self.bound.project(images, np.broadcast_to(self.seed, images.shape))
            rows, probs_o, probs_c, hits = self._try(images, phase)
            if rows.size == 0:
                break
            kept |= self._keep_if_smaller(images, rows, probs_o, probs_c, hits, end.trace, phase)
            departed = np.flatnonzero(~self._agree_on_seed(probs_o, probs_c))
            if departed.size == 0:
                lo = float(alphas[rows[-1]])
                continue
            r = int(rows[departed[0]])  # rows ascend with alpha
            hi = float(alphas[r])
            lo = float(alphas[r - 1]) if r > 0 else lo
        self.phases[phase]["alpha"] = hi
        return kept

    def _boundary_phase(self) -> None:
        """Walk along the decision boundary toward the seed (HopSkipJump-style, Chen et al. 2020).

        At the current input (just past the point where the models stop agreeing on the seed's label),
        estimate the boundary's normal from :data:`GRADIENT_PROBES` random probes (which side each lands
        on), step along it past the boundary, and line-search back toward the seed. Stops when a step
        gains nothing or the budget reserved for the later phases is reached.
        """
        rng = np.random.default_rng(self.rng_seed)
        shape = self.seed.shape
        self.phases.setdefault("boundary", {"queries": 0, "kept": 0})
        for t in range(1, BOUNDARY_STEPS + 1):
            per_step = GRADIENT_PROBES + STEP_SIZES + BLEND_ROUNDS * BOUNDARY_GRID
            if self.affordable() < BOUNDARY_RESERVE_IMAGES + per_step:
                break
            state = self.history[-1]
            x = state.image.astype(np.float64)
            dist = float(self._l2(state.image[None])[0])
            if dist == 0.0:
                break
            u = _smooth_noise(rng, GRADIENT_PROBES, shape, PROBE_CELL_PX)
            u /= np.sqrt(np.sum(u * u, axis=(1, 2, 3), keepdims=True))
            probes = _to_uint8(x + GRADIENT_RADIUS * dist * u)
            probes = self.bound.project(probes, np.broadcast_to(self.seed, probes.shape))
            rows, probs_o, probs_c, hits = self._try(probes, "boundary")
            if rows.size < 2:
                break
            improved = self._keep_if_smaller(probes, rows, probs_o, probs_c, hits, state.trace, "boundary")
            side = np.where(self._agree_on_seed(probs_o, probs_c), -1.0, 1.0)
            if abs(side.mean()) < 1.0:
                side -= side.mean()
            direction = np.tensordot(side, u[rows], axes=1)
            norm = float(np.sqrt(np.sum(direction * direction)))
            if norm == 0.0:
                break
            direction /= norm
            steps = dist / np.sqrt(t) * 0.5 ** np.arange(STEP_SIZES)
            ends = _to_uint8(x + steps[:, None, None, None] * direction)
            ends = self.bound.project(ends, np.broadcast_to(self.seed, ends.shape))
            rows, probs_o, probs_c, hits = self._try(ends, "boundary")
            improved |= self._keep_if_smaller(ends, rows, probs_o, probs_c, hits, state.trace, "boundary")
            departed = np.flatnonzero(~self._agree_on_seed(probs_o, probs_c))
            if departed.size:
                j = int(departed[0])  # the longest step that stays past the boundary
                end = _State(ends[rows[j]], probs_o[j], probs_c[j], state.trace)
                improved |= self._line_search(end, "boundary", BLEND_ROUNDS, BOUNDARY_GRID, BOUNDARY_LOWEST_ALPHA)
            if not improved:
                break

    def _region_phase(self) -> None:
        """Restore seed pixels in blocks of halving size while the input still triggers."""
        height, width = self.seed.shape[:2]
        size = max(1, (max(height, width) + 1) // 2)
        self.phases.setdefault("regions", {"queries": 0, "kept": 0})
        while True:
            self._restore_blocks(size)
            if size <= MIN_BLOCK_PX:
                break
            size = max(MIN_BLOCK_PX, (size + 1) // 2)

    def _restore_blocks(self, size: int) -> None:
        state = self.history[-1]
        changed = np.any(state.image != self.seed, axis=2)
        blocks = [(y, x) for y in range(0, changed.shape[0], size) for x in range(0, changed.shape[1], size)
                  if changed[y:y + size, x:x + size].any()]
        if not blocks or len(blocks) > self.affordable():
            return
        singles = np.stack([self._restored(state.image, [b], size) for b in blocks])
        rows, probs_o, probs_c, hits = self._try(singles, "regions")
        if not hits.any():
            return
        margins = disagreement_margin(probs_o[hits], probs_c[hits])
        ranked = np.argsort(-margins, kind="stable")
        order = [blocks[r] for r in rows[hits][ranked]]
        lengths = []
        length = len(order)
        while length >= 2:
            lengths.append(length)
            length //= 2
        if lengths:
            combos = np.stack([self._restored(state.image, order[:m], size) for m in lengths])
            c_rows, c_probs_o, c_probs_c, c_hits = self._try(combos, "regions")
            if c_hits.any():
                k = int(np.flatnonzero(c_hits)[0])  # lengths descend: the longest prefix that triggers
                self._keep(_State(combos[c_rows[k]], c_probs_o[k], c_probs_c[k], state.trace), "regions")
                return
        best = int(np.flatnonzero(hits)[ranked[0]])  # only one block can go: the clearest one
        self._keep(_State(singles[rows[best]], probs_o[best], probs_c[best], state.trace), "regions")

    def _restored(self, image: np.ndarray, blocks: Sequence[tuple[int, int]], size: int) -> np.ndarray:
        out = image.copy()
        for y, x in blocks:
            out[y:y + size, x:x + size] = self.seed[y:y + size, x:x + size]
        return out

    # -- re-verification ----------------------------------------------------------------------
    def _verified(self) -> tuple[_State, int]:
        """The newest kept state that triggers on every re-run (the raw input as the last resort)."""
        for state in reversed(self.history):
            reproduced = 0
            for _ in range(self.verify_runs):
                probs_o, probs_c = self._infer(state.image[None])
                self.verify_queries += QUERIES_PER_IMAGE
                reproduced += int(deviation.deviates(probs_o, probs_c, self.ignore_ties)[0])
            if reproduced == self.verify_runs or state is self.history[0]:
                return state, reproduced
        raise AssertionError("unreachable: the raw input is always returned")


def _smooth_noise(rng: np.random.Generator, count: int, shape: tuple[int, ...], cell_px: int) -> np.ndarray:
    """``count`` random directions that vary smoothly: Gaussian noise on a grid of ``cell_px`` cells,
    bilinearly upsampled to the image. Low-frequency probes estimate an image model's boundary normal
    with far fewer queries than per-pixel noise (Li et al., QEBA, CVPR 2020)."""
    height, width, channels = shape
    if cell_px <= 1:
        return rng.standard_normal((count, height, width, channels))
    gh, gw = -(-height // cell_px) + 1, -(-width // cell_px) + 1
    coarse = rng.standard_normal((count, gh, gw, channels))
    ys = np.arange(height) / cell_px
    xs = np.arange(width) / cell_px
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    top = coarse[:, y0][:, :, x0] * (1 - fx) + coarse[:, y0][:, :, x0 + 1] * fx
    bottom = coarse[:, y0 + 1][:, :, x0] * (1 - fx) + coarse[:, y0 + 1][:, :, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def replay_subsets(seed: np.ndarray, steps: Sequence[MutationStep], subsets: Sequence[Sequence[int]],
                   bound: PerturbationBound = UNBOUNDED) -> np.ndarray:
    """Replay several subsets of a trace at once (each subset's steps in trace order), bounded.

    Args:
        seed: the seed image, uint8 HWC.
        steps: the full trace.
        subsets: step indices to keep, one list per output image.
        bound: the search's bound (its L-infinity projection follows every step, as in the search).

    Returns:
        uint8 (len(subsets), H, W, C).
    """
    images = np.repeat(np.asarray(seed, dtype=np.uint8)[None], len(subsets), axis=0)
    seeds = images.copy()
    members = [set(s) for s in subsets]
    for j, step in enumerate(steps):
        rows = np.asarray([i for i, m in enumerate(members) if j in m], dtype=np.int64)
        if rows.size:
            images[rows] = bound.project(mutations.apply(images[rows], [step] * rows.size), seeds[rows])
    return images


def minimize(original: Session, compressed: Session, seed: np.ndarray, image: np.ndarray,
             trace: Sequence[MutationStep], probs_original: np.ndarray, probs_compressed: np.ndarray, *,
             bound: PerturbationBound = UNBOUNDED, max_queries: int = MAX_MINIMIZE_QUERIES,
             verify_runs: int = VERIFY_RUNS, clock: Callable[[], float] = time.monotonic,
             seed_label: int | None = None, rng_seed: int | Sequence[int] = 0,
             ignore_ties: bool = False) -> MinimizeResult:
    """Minimize one triggering input (see the module docstring).

    Args:
        original: the original model's session.
        compressed: the compressed model's session.
        seed: the seed image, uint8 HWC.
        image: the raw triggering input, uint8 HWC.
        trace: its mutation trace.
        probs_original: the original model's output on ``image``.
        probs_compressed: the compressed model's output on ``image``.
        bound: the search's perturbation bound; every candidate stays inside it.
        max_queries: minimization query budget (re-runs not included).
        verify_runs: re-runs the result must survive.
        clock: a monotonic clock in seconds.
        seed_label: the label both models give the seed (one extra query pair when None).
        rng_seed: seeds the boundary walk's random probes.
        ignore_ties: the search's criterion (``deviation.deviates``).

    Returns:
        The minimized input with its distances before and after and its query counts.
    """
    minimizer = Minimizer(original, compressed, seed, bound, max_queries, verify_runs, clock, rng_seed, ignore_ties)
    return minimizer.run(image, trace, probs_original, probs_compressed, seed_label)
