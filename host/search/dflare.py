"""DFlare: Metropolis-Hastings operator selection and the novelty/difference fitness.

The algorithm (DESIGN.md section 3), per seed:

1. choose an operator: the first uniformly; afterwards sort the operators by success rate
   (accepted mutants / uses, ties broken at random), let k1 be the rank of the operator that
   produced the current image, propose a rank k2 uniformly and accept it with probability
   ``min(1, (1 - p) ** (k2 - k1))``, ``p = 1 / 7``; repeat until accepted;
2. mutate the current image with it and query both models;
3. fitness of the mutant: (is the concatenated probability pair novel?, output difference
   ``|p_orig(y) - p_cps(y)|`` for the seed label y). Novel = squared L2 distance to the nearest
   vector in the seed's corpus > 0.5; novel vectors join the corpus (TensorFuzz);
4. the mutant replaces the current image when it is novel or its difference grew by > 1e-3;
   the operator's success count goes up.

``faithful=True`` reproduces the original code (yqtianust/DFlare ``test_gen_main.py``):

* ``k1`` is always -1 (``index()`` compares a name with an operator object), so every proposal
  is accepted with probability ``(1 - p) ** (k2 + 1)``, biasing toward top ranks regardless of
  the last operator;
* the difference test is ``abs(|d_new| - |d_best|) > 1e-3``, which also accepts decreases;
* the difference is each model's own top-1 probability (``p_orig(top) - p_cps(top)``), and the
  best fitness starts at (not novel, 0) instead of the seed's difference;
* the two noise operators wrap around as ``astype(uint8)`` does (see ``mutations``).

Ablations: ``use_mh=False`` (uniform operator choice, the original's mode "b") and
``use_novelty=False`` (difference only, mode "c").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from host.search import mutations
from host.search.results import MutationStep
from host.search.searcher import Candidate, SeedContext

#: Squared L2 distance above which a probability pair counts as novel (TensorFuzz's and DFlare's 0.5).
NOVELTY_THRESHOLD: float = 0.5
#: Minimal growth of the output difference that makes a mutant better (the original's 1e-3).
DIFF_THRESHOLD: float = 1e-3
#: Memory cap for one seed's novelty corpus: 4 MiB holds ~50k pairs of 10-class vectors, and keeps
#: 1,000 live seeds under 4 GiB even for 1000-class models (then ~500 vectors each). When full, the
#: oldest vectors are overwritten (a ring), so memory stays bounded on endless searches.
MAX_CORPUS_BYTES: int = 4 * 1024 * 1024
#: The smallest success-rate denominator, as in the original (``total + 1e-7``).
_SCORE_EPSILON: float = 1e-7


def mh_acceptance(k1: int, k2: int, p: float) -> float:
    """Probability of accepting a proposed rank k2 when the last operator had rank k1."""
    return float(min(1.0, (1.0 - p) ** (k2 - k1)))


class MHSelector:
    """Chooses mutation operators by Metropolis-Hastings over their success rates.

    Args:
        n_ops: number of operators (ids 0..n_ops-1).
        rng: the seed's random generator.
        faithful: k1 fixed at -1, as in the original code.
        uniform: ignore the statistics and pick uniformly (the no-MH ablation).
        p: the geometric parameter (default 1 / n_ops).
    """

    def __init__(self, n_ops: int, rng: np.random.Generator, faithful: bool = False, uniform: bool = False,
                 p: float | None = None) -> None:
        self.n_ops = n_ops
        self.rng = rng
        self.faithful = faithful
        self.uniform = uniform
        self.p = 1.0 / n_ops if p is None else p
        self.uses = np.zeros(n_ops, dtype=np.int64)
        self.successes = np.zeros(n_ops, dtype=np.int64)
        self.proposals = 0  # MH proposals drawn (accepted or not)

    @property
    def scores(self) -> np.ndarray:
        return self.successes / (self.uses + _SCORE_EPSILON)

    def ranking(self) -> list[int]:
        """Operator ids from best to worst score, ties in random order (shuffle, then stable sort)."""
        scores = self.scores.tolist()
        return sorted(self.rng.permutation(self.n_ops).tolist(), key=lambda op: -scores[op])

    def choose(self, last_op: int | None) -> int:
        """Pick the next operator given the one that produced the current image (None at the start)."""
        if self.uniform or last_op is None:
            op = int(self.rng.integers(self.n_ops))
        else:
            order = self.ranking()
            k1 = -1 if self.faithful else order.index(last_op)
            op = order[self.propose_rank(k1)]
        self.uses[op] += 1
        return op

    def propose_rank(self, k1: int) -> int:
        """Draw ranks uniformly until one is accepted with probability ``(1 - p) ** (k2 - k1)``."""
        while True:
            k2 = int(self.rng.integers(self.n_ops))
            self.proposals += 1
            if self.rng.random() < mh_acceptance(k1, k2, self.p):
                return k2

    def record_success(self, op: int) -> None:
        self.successes[op] += 1


class NoveltyCorpus:
    """Exact nearest-neighbour novelty over stored vectors, in a fixed-size ring buffer.

    Args:
        dim: vector length.
        threshold: squared L2 distance above which a vector is novel.
        max_bytes: memory cap (float32 storage).
    """

    def __init__(self, dim: int, threshold: float = NOVELTY_THRESHOLD, max_bytes: int = MAX_CORPUS_BYTES) -> None:
        self.dim = dim
        self.threshold = threshold
        self.capacity = max(1, max_bytes // (4 * dim))
        self._data = np.empty((min(self.capacity, 64), dim), dtype=np.float32)
        self.size = 0  # vectors stored (<= capacity)
        self.added = 0  # vectors ever added (the ring's write position is added % capacity)

    def nearest_sq_distance(self, vector: np.ndarray) -> float:
        """Squared L2 distance to the nearest stored vector (inf when empty)."""
        if self.size == 0:
            return float("inf")
        diff = self._data[: self.size] - np.asarray(vector, dtype=np.float32)
        return float(np.einsum("ij,ij->i", diff, diff).min())

    def nearest_sq_distances(self, vectors: np.ndarray) -> np.ndarray:
        """Squared L2 distance of each row of ``vectors`` to its nearest stored vector (inf when empty).

        Bit for bit what :meth:`nearest_sq_distance` gives row by row (the same einsum reduction per
        pair), so a decision never depends on how many vectors are scored together. Works in chunks
        of rows whose temporaries stay under ``MAX_CORPUS_BYTES``.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.size == 0:
            return np.full(len(vectors), np.inf)
        data = self._data[: self.size]
        rows = max(1, MAX_CORPUS_BYTES // max(1, data.nbytes))
        out = np.empty(len(vectors), dtype=np.float64)
        for start in range(0, len(vectors), rows):
            diff = data[None, :, :] - vectors[start : start + rows, None, :]
            out[start : start + rows] = np.einsum("kij,kij->ki", diff, diff).min(axis=1)
        return out

    def add(self, vector: np.ndarray) -> None:
        if self.size < self.capacity and self.size == len(self._data):
            grown = np.empty((min(self.capacity, 2 * len(self._data)), self.dim), dtype=np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.added % self.capacity] = vector
        self.added += 1
        self.size = min(self.added, self.capacity)

    def update(self, vector: np.ndarray) -> tuple[bool, float]:
        """Add ``vector`` if novel; return (novel, nearest squared distance). The first is always novel."""
        distance = self.nearest_sq_distance(vector)
        novel = distance > self.threshold
        if novel:
            self.add(vector)
        return novel, distance

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)


@dataclass(frozen=True)
class Fitness:
    """A mutant's fitness: novelty of its probability pair and the output difference."""

    novel: bool
    diff: float  # p_orig - p_cps for the tracked class (signed, as the original stores it)


def improves(new: Fitness, best: Fitness, faithful: bool = False, threshold: float = DIFF_THRESHOLD) -> bool:
    """Whether a mutant with fitness ``new`` replaces the current image (fitness ``best``).

    Default: novel, or ``|d_new| - |d_best| > threshold``. Faithful: novel, or the absolute
    difference moved by more than ``threshold`` in either direction.
    """
    change = abs(new.diff) - abs(best.diff)
    grew = abs(change) > threshold if faithful else change > threshold
    return bool(grew or new.novel)


def output_difference(probs_original: np.ndarray, probs_compressed: np.ndarray, label: int,
                      faithful: bool = False) -> float:
    """``p_orig(label) - p_cps(label)``; faithful: each model's own top-1 probability."""
    if faithful:
        return float(np.max(probs_original) - np.max(probs_compressed))
    return float(probs_original[label] - probs_compressed[label])


@dataclass(frozen=True)
class DFlareConfig:
    """DFlare's switches: the faithful reproduction and the two ablations."""

    faithful: bool = False
    use_mh: bool = True
    use_novelty: bool = True
    novelty_threshold: float = NOVELTY_THRESHOLD
    diff_threshold: float = DIFF_THRESHOLD


class DFlareSearcher:
    """DFlare on one seed (see the module docstring). Speculative: see ``searcher.py``."""

    speculative = True

    def __init__(self, seed: SeedContext, rng: np.random.Generator, config: DFlareConfig = DFlareConfig()) -> None:
        self.seed = seed
        self.rng = rng
        self.config = config
        self.ops = mutations.OPERATORS
        self.selector = MHSelector(len(self.ops), rng, faithful=config.faithful, uniform=not config.use_mh)
        self.current = seed.image
        self.trace: tuple[MutationStep, ...] = ()
        self.last_op: int | None = None  # the operator that produced the current image
        # (generator state, uses, proposals) before the first pending proposal and after each one
        self._snapshots: list[tuple] = []
        self._pending = 0  # candidates of the current proposal (0: none open)
        self._consumed = 0  # of those, consumed so far
        self.accepted = 0
        self.corpus: NoveltyCorpus | None = None
        if config.use_novelty:
            self.corpus = NoveltyCorpus(2 * len(seed.probs_original), config.novelty_threshold)
            self.corpus.update(np.concatenate([seed.probs_original, seed.probs_compressed]))
        seed_diff = 0.0 if config.faithful else self._diff(seed.probs_original, seed.probs_compressed)
        self.best = Fitness(False, seed_diff)

    def _diff(self, probs_original: np.ndarray, probs_compressed: np.ndarray) -> float:
        return output_difference(probs_original, probs_compressed, self.seed.label, self.config.faithful)

    def propose(self, max_candidates: int = 1) -> list[Candidate]:
        """Up to ``max_candidates`` candidates, each proposed as if the ones before it were rejected."""
        count = max(1, max_candidates)
        # A single candidate never needs rolling back: snapshots only when speculating.
        self._snapshots = [self._snapshot()] if count > 1 else []
        self._pending = count
        self._consumed = 0
        candidates = []
        for _ in range(count):
            op = self.selector.choose(self.last_op)
            step = mutations.draw(self.ops[op], self.rng, self.current.shape, faithful=self.config.faithful)
            candidates.append(Candidate(self.current, self.trace, step, tag=op))
            if count > 1:
                self._snapshots.append(self._snapshot())
        return candidates

    def _snapshot(self) -> tuple:
        return self.rng.bit_generator.state, self.selector.uses.copy(), self.selector.proposals

    def observe(self, candidates: list[Candidate], probs_original: np.ndarray, probs_compressed: np.ndarray) -> int:
        """Score the next pending candidates in order; stop at the first kept one (see ``searcher.py``).

        All rows are scored in one numpy pass against the state before them: a rejected candidate
        changes no state (it is not novel, so it never joined the corpus), so row j's verdict in
        the one-at-a-time loop is its verdict against that state, up to the first kept row. The
        rule is :func:`improves`, vectorized.
        """
        if not self._pending or not candidates:
            return 0
        n = len(candidates)
        probs_original, probs_compressed = probs_original[:n], probs_compressed[:n]
        if self.config.faithful:
            diffs = (probs_original.max(axis=1) - probs_compressed.max(axis=1)).astype(np.float64)
        else:
            label = self.seed.label
            diffs = (probs_original[:, label] - probs_compressed[:, label]).astype(np.float64)
        change = np.abs(diffs) - abs(self.best.diff)
        kept = np.abs(change) > self.config.diff_threshold if self.config.faithful \
            else change > self.config.diff_threshold
        vectors = None
        if self.corpus is not None:
            vectors = np.concatenate([probs_original, probs_compressed], axis=1)
            novel = self.corpus.nearest_sq_distances(vectors) > self.corpus.threshold
            kept |= novel
        hits = np.flatnonzero(kept)
        if not hits.size:
            self._consumed += n
            return n
        j = int(hits[0])
        self._consumed += j + 1
        is_novel = vectors is not None and bool(novel[j])
        if is_novel:
            self.corpus.add(vectors[j])  # type: ignore[union-attr]
        self._keep(candidates[j], Fitness(is_novel, float(diffs[j])))
        self.end_step()  # later candidates were mutations of the image just replaced
        return j + 1

    @property
    def proposal_open(self) -> bool:
        """Whether pending candidates are still valid (no kept candidate has cut them off)."""
        return self._pending > 0

    def end_step(self, also_consumed: int = 0) -> None:
        """Forget unconsumed proposals: restore the generator and counters to just after the last consumed.

        Args:
            also_consumed: pending candidates consumed without being observed (a confirmed deviation).
        """
        self._consumed += also_consumed
        if self._snapshots and self._consumed < self._pending:
            state, uses, proposals = self._snapshots[self._consumed]
            self.rng.bit_generator.state = state
            self.selector.uses = uses
            self.selector.proposals = proposals
        self._snapshots = []
        self._pending = 0

    def _keep(self, candidate: Candidate, fitness: Fitness) -> None:
        """Make a kept candidate the current image."""
        assert candidate.image is not None
        self.best = fitness
        self.current = candidate.image
        self.trace = candidate.full_trace
        self.last_op = candidate.tag
        self.selector.record_success(candidate.tag)
        self.accepted += 1

    def stats(self) -> dict:
        return {
            "accepted": self.accepted,
            "corpus_size": 0 if self.corpus is None else self.corpus.size,
            "operator_uses": {op: int(n) for op, n in zip(self.ops, self.selector.uses)},
            "operator_successes": {op: int(n) for op, n in zip(self.ops, self.selector.successes)},
        }
