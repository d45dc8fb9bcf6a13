"""DFlare: Metropolis-Hastings operator selection, the novelty/difference fitness, and its departures.

The original algorithm (DESIGN.md section 3; yqtianust/DFlare ``test_gen_main.py``), per seed:

1. choose an operator: the first uniformly; afterwards sort the operators by success rate
   (accepted mutants / uses, ties broken at random), let k1 be the rank of the operator that
   produced the current image, propose a rank k2 uniformly and accept it with probability
   ``min(1, (1 - p) ** (k2 - k1))``, ``p = 1 / 7``; repeat until accepted;
2. mutate the current image with it and query both models;
3. fitness of the mutant: (is the concatenated probability pair novel?, output difference). Novel =
   squared L2 distance to the nearest vector in the seed's corpus > 0.5; novel vectors join the
   corpus (TensorFuzz);
4. the mutant replaces the current image when it is novel or its difference moved by > 1e-3; the
   operator's success count goes up.

What the original code does, bugs included (``--algo dflare-faithful``, :data:`ORIGINAL`): ``k1`` is
always -1 (``index()`` compares a name with an operator object), so every proposal is accepted with
probability ``(1 - p) ** (k2 + 1)``; the difference test is ``abs(|d_new| - |d_best|) > 1e-3``,
which also keeps decreases (a filtered random walk); the difference is each model's own top-1
probability (``p_orig(top) - p_cps(top)``); the best difference starts at 0; and the two noise
operators use sigma 0.32 grey levels and wrap around as ``astype(uint8)`` does (``mutations``).

Each departure from it is one field of :class:`DFlareConfig` whose ``False`` (or ``None``) value is
the original's, so each can be measured alone (:data:`DEPARTURES`, ``scripts/bench_real.py``).
The default, :data:`DEFAULT`, keeps those that win on third-party models (docs/benchmarks.md,
"Real models"):

``margin_fitness``
    A mutant is also kept when it brings the models closer to a label change: the smaller of the
    two models' top-1 minus top-2 probability (the *margin*) fell by more than
    ``min(1e-3, margin / 10)`` below the best so far. The relative step lets the search keep
    descending below a margin of 1e-3, which is where float16 and other rare deviations live.
``stall_patience`` (the stall rule)
    After ``STALL_PATIENCE`` candidates in a row are rejected, the next one is kept whatever its
    fitness. A seed on which no single mutation moves either output (both models saturated, the
    int8 softmax at 255/256) otherwise repeats mutations of the seed image forever; the kept
    mutant becomes the new reference, so the search walks off the plateau.
``improvement_only``
    Keep a mutant on its difference only when ``|d_new| - |d_best| > 1e-3`` (no decreases).
``rank_from_last``
    The MH proposal uses the last operator's rank as k1 (the paper's algorithm).
``seed_label_difference``
    The difference is ``p_orig(y) - p_cps(y)`` for the seed label y.
``start_at_seed_difference``
    The best difference starts at the seed's own.
``drop_novelty``
    No novelty term: a mutant is kept on its difference, its margin or the stall rule only, and no
    corpus is kept (the original's mode "c" fitness, here beside the margin). Inside the default it
    is neutral on the third-party pairs (the margin already keeps what a novel vector would; on the
    original alone it is neutral to slightly worse); on the float16 fixtures the novelty term made
    the search wander off a descending margin: without it every seed of digits32rgb/float16 triggers
    (300/300 against 297/300, 22% fewer candidates), and each step scores no corpus
    (docs/benchmarks.md, "Real models").
``strong_noise``
    Gaussian noise of variance 0.1 on the 0..1 scale (sigma ~ 80.6 grey levels), clipped; speckle
    clipped too.

Ablation: ``use_mh=False`` (uniform operator choice, the original's mode "b"). The paper's
novelty fitness on top of the default is ``--algo dflare-novelty``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from host.search import mutations
from host.search.results import MutationStep
from host.search.searcher import Candidate, SeedContext

#: Squared L2 distance above which a probability pair counts as novel (TensorFuzz's and DFlare's 0.5).
NOVELTY_THRESHOLD: float = 0.5
#: Minimal change of the output difference that makes a mutant better (the original's 1e-3).
DIFF_THRESHOLD: float = 1e-3
#: The margin must fall by at least this share of itself once it is below DIFF_THRESHOLD * 10.
MARGIN_RELATIVE_STEP: float = 0.1
#: Rejected candidates in a row after which the stall rule keeps the next one (docs/benchmarks.md,
#: "Real models": 20-100 behave alike; without the rule 1-6% of seeds stall on the real pairs).
STALL_PATIENCE: int = 50
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
        rank_from_last: k1 is the rank of the last operator (False: always -1, the original code's bug).
        uniform: ignore the statistics and pick uniformly (the no-MH ablation).
        p: the geometric parameter (default 1 / n_ops).
    """

    def __init__(self, n_ops: int, rng: np.random.Generator, rank_from_last: bool = True, uniform: bool = False,
                 p: float | None = None) -> None:
        self.n_ops = n_ops
        self.rng = rng
        self.rank_from_last = rank_from_last
        self.uniform = uniform
        self.p = 1.0 / n_ops if p is None else p
        self.uses = np.zeros(n_ops, dtype=np.int64)
        self.successes = np.zeros(n_ops, dtype=np.int64)
        self.proposals = 0  # MH proposals drawn (accepted or not)
        # mh_acceptance(k1, k2) at [k2 - k1 + n_ops]: the same floats, without a call per proposal
        self._acceptance = [mh_acceptance(0, d, self.p) for d in range(-n_ops, n_ops + 1)]

    @property
    def scores(self) -> np.ndarray:
        return np.asarray(self._score_list())

    def _score_list(self) -> list[float]:
        """successes / (uses + epsilon) per operator, in Python floats: for 7 values cheaper than
        numpy, and ``ranking`` runs for every candidate proposed."""
        return [s / (u + _SCORE_EPSILON) for s, u in zip(self.successes.tolist(), self.uses.tolist())]

    def ranking(self) -> list[int]:
        """Operator ids from best to worst score, ties in random order (shuffle, then stable sort)."""
        scores = self._score_list()
        return sorted(self.rng.permutation(self.n_ops).tolist(), key=scores.__getitem__, reverse=True)

    def choose(self, last_op: int | None) -> int:
        """Pick the next operator given the one that produced the current image (None at the start)."""
        if self.uniform or last_op is None:
            op = int(self.rng.integers(self.n_ops))
        else:
            order = self.ranking()
            k1 = order.index(last_op) if self.rank_from_last else -1
            op = order[self.propose_rank(k1)]
        self.uses[op] += 1
        return op

    def propose_rank(self, k1: int) -> int:
        """Draw ranks uniformly until one is accepted with probability ``(1 - p) ** (k2 - k1)``."""
        offset = self.n_ops - k1
        while True:
            k2 = int(self.rng.integers(self.n_ops))
            self.proposals += 1
            if self.rng.random() < self._acceptance[k2 + offset]:
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
class DFlareConfig:
    """DFlare's switches: each departure from the original code, and the two ablations.

    A departure's ``False`` (``None``) value is what the original code does; the defaults are
    :data:`DEFAULT`. See the module docstring for what each one changes.
    """

    margin_fitness: bool = True
    stall_patience: int | None = STALL_PATIENCE
    improvement_only: bool = True
    rank_from_last: bool = True
    seed_label_difference: bool = True
    start_at_seed_difference: bool = True
    strong_noise: bool = False
    drop_novelty: bool = True
    use_mh: bool = True
    novelty_threshold: float = NOVELTY_THRESHOLD
    diff_threshold: float = DIFF_THRESHOLD

    def __post_init__(self) -> None:
        if self.stall_patience is not None and self.stall_patience < 1:
            raise ValueError(f"stall_patience must be at least 1 (or None), got {self.stall_patience}")

    def with_departure(self, name: str, on: bool) -> DFlareConfig:
        """This config with one departure (a :data:`DEPARTURES` name) switched on or off."""
        return replace(self, **{name: (DEPARTURES[name] if on else ORIGINAL_VALUES[name])})

    def departures(self) -> tuple[str, ...]:
        """The departures from the original this config makes, in :data:`DEPARTURES` order."""
        return tuple(name for name in DEPARTURES if getattr(self, name) != ORIGINAL_VALUES[name])


#: Each departure from the original code: its field and the value that switches it on.
DEPARTURES: dict[str, object] = {
    "margin_fitness": True,
    "stall_patience": STALL_PATIENCE,
    "improvement_only": True,
    "rank_from_last": True,
    "seed_label_difference": True,
    "start_at_seed_difference": True,
    "drop_novelty": True,
    "strong_noise": True,
}
#: The original code's value of each departure's field.
ORIGINAL_VALUES: dict[str, object] = {name: (None if name == "stall_patience" else False) for name in DEPARTURES}
#: The original code's behaviour, bugs included (``--algo dflare-faithful``).
ORIGINAL = DFlareConfig(**ORIGINAL_VALUES)  # type: ignore[arg-type]
#: The default search (``--algo dflare``).
DEFAULT = DFlareConfig()
assert set(DEPARTURES) <= {f.name for f in fields(DFlareConfig)}


def output_difference(probs_original: np.ndarray, probs_compressed: np.ndarray, label: int,
                      seed_label: bool = True) -> np.ndarray:
    """Per row: ``p_orig(label) - p_cps(label)``, or (``seed_label=False``, the original) each
    model's own top-1 probability ``max p_orig - max p_cps``. Accepts one row or a batch."""
    po, pc = np.atleast_2d(probs_original), np.atleast_2d(probs_compressed)
    if seed_label:
        return (po[:, label] - pc[:, label]).astype(np.float64)
    return (po.max(axis=1) - pc.max(axis=1)).astype(np.float64)


def margin(probs: np.ndarray) -> np.ndarray:
    """Per row: top-1 minus top-2 probability (0 at a tie, where the label can flip)."""
    top2 = np.partition(np.atleast_2d(probs), -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]).astype(np.float64)


def pair_margin(probs_original: np.ndarray, probs_compressed: np.ndarray) -> np.ndarray:
    """Per row: the smaller of the two models' margins (how close either is to a label change)."""
    return np.minimum(margin(probs_original), margin(probs_compressed))


@dataclass(frozen=True)
class Best:
    """The fitness the current image reached: a mutant must beat it to replace the image."""

    diff: float  # the output difference, signed as the original stores it
    margin: float  # the pair margin (``pair_margin``)


def kept_rows(config: DFlareConfig, best: Best, rejected_in_a_row: int, diffs: np.ndarray,
              margins: np.ndarray, novel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The acceptance rule, for consecutive candidates scored against the same current image.

    Row j is judged as the one-at-a-time loop would judge it after rows 0..j-1 were all rejected
    (a rejected candidate changes nothing but the stall count).

    Returns:
        (kept, by_stall): boolean masks; ``by_stall`` marks rows kept only by the stall rule.
    """
    return _kept(config, best.diff, best.margin, rejected_in_a_row + np.arange(len(diffs)), diffs, margins, novel)


def _kept(config: DFlareConfig, best_diff, best_margin, rejected_before, diffs: np.ndarray, margins: np.ndarray,
          novel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kept_rows` with the state per row (scalars or arrays): rows of several seeds at once."""
    change = np.abs(diffs) - np.abs(best_diff)
    better = change > config.diff_threshold if config.improvement_only \
        else np.abs(change) > config.diff_threshold
    if novel is not None:
        better = better | novel
    if config.margin_fitness:
        step = np.minimum(config.diff_threshold, MARGIN_RELATIVE_STEP * np.asarray(best_margin))
        better = better | (margins < best_margin - step)
    by_stall = np.zeros(len(diffs), dtype=bool)
    if config.stall_patience is not None:
        by_stall = ~better & (rejected_before >= config.stall_patience)
    return better | by_stall, by_stall


class DFlareSearcher:
    """DFlare on one seed (see the module docstring). Speculative: see ``searcher.py``."""

    speculative = True

    def __init__(self, seed: SeedContext, rng: np.random.Generator, config: DFlareConfig = DEFAULT) -> None:
        self.seed = seed
        self.rng = rng
        self.config = config
        self.ops = mutations.OPERATORS
        self.selector = MHSelector(len(self.ops), rng, rank_from_last=config.rank_from_last,
                                   uniform=not config.use_mh)
        self.current = seed.image
        self.trace: tuple[MutationStep, ...] = ()
        self.last_op: int | None = None  # the operator that produced the current image
        # (generator state, uses, proposals) before the first pending proposal and after each one
        self._snapshots: list[tuple] = []
        self._pending = 0  # candidates of the current proposal (0: none open)
        self._consumed = 0  # of those, consumed so far
        self.accepted = 0  # mutants that replaced the current image
        self.stall_escapes = 0  # of those, kept by the stall rule
        self.rejected_in_a_row = 0  # consumed candidates rejected since the last kept one
        self.corpus: NoveltyCorpus | None = None
        if not config.drop_novelty:
            self.corpus = NoveltyCorpus(2 * len(seed.probs_original), config.novelty_threshold)
            self.corpus.update(np.concatenate([seed.probs_original, seed.probs_compressed]))
        seed_diff = float(self._diffs(seed.probs_original, seed.probs_compressed)[0]) \
            if config.start_at_seed_difference else 0.0
        self.best = Best(seed_diff, float(pair_margin(seed.probs_original, seed.probs_compressed)[0]))

    def _diffs(self, probs_original: np.ndarray, probs_compressed: np.ndarray) -> np.ndarray:
        return output_difference(probs_original, probs_compressed, self.seed.label, self.config.seed_label_difference)

    def propose(self, max_candidates: int = 1) -> list[Candidate]:
        """Up to ``max_candidates`` candidates, each proposed as if the ones before it were rejected."""
        count = max(1, max_candidates)
        # A single candidate never needs rolling back: snapshots only when speculating.
        self._snapshots = [self._snapshot()] if count > 1 else []
        self._pending = count
        self._consumed = 0
        candidates = []
        original_noise = not self.config.strong_noise
        for _ in range(count):
            op = self.selector.choose(self.last_op)
            step = mutations.draw(self.ops[op], self.rng, self.current.shape, faithful=original_noise)
            candidates.append(Candidate(self.current, self.trace, step, tag=op))
            if count > 1:
                self._snapshots.append(self._snapshot())
        return candidates

    def _snapshot(self) -> tuple:
        return self.rng.bit_generator.state, self.selector.uses.copy(), self.selector.proposals

    def observe(self, candidates: list[Candidate], probs_original: np.ndarray, probs_compressed: np.ndarray) -> int:
        """Score the next pending candidates in order; stop at the first kept one (see ``searcher.py``).

        All rows are scored in one numpy pass against the state before them (:func:`kept_rows`): a
        rejected candidate changes no state but the stall count (it is not novel, so it never
        joined the corpus), so row j's verdict in the one-at-a-time loop is its verdict against
        that state, up to the first kept row.
        """
        return DFlareSearcher.observe_many([self], [candidates], probs_original, probs_compressed,
                                           [(0, len(candidates))])[0]

    @staticmethod
    def observe_many(searchers: list[DFlareSearcher], candidate_lists: list[list[Candidate]],
                     probs_original: np.ndarray, probs_compressed: np.ndarray,
                     spans: list[tuple[int, int]]) -> list[int]:
        """:meth:`observe` for many seeds at once: seed i's rows are ``spans[i]`` of the probabilities.

        The differences, margins and the acceptance rule run in one numpy pass over every row of the
        step (the novelty distances per seed, against each seed's own corpus); only the seeds that
        keep a candidate run Python. Each seed's verdicts are exactly those of its own
        :meth:`observe`. The searchers must share one config.

        Returns:
            Candidates each seed consumed.
        """
        consumed = [0] * len(searchers)
        live = [i for i, (s, (lo, hi)) in enumerate(zip(searchers, spans)) if s._pending and hi > lo]
        if not live:
            return consumed
        config = searchers[live[0]].config
        lengths = np.asarray([spans[i][1] - spans[i][0] for i in live])
        rows = np.concatenate([np.arange(*spans[i]) for i in live])
        owner = np.repeat(np.arange(len(live)), lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        po, pc = probs_original[rows], probs_compressed[rows]
        if config.seed_label_difference:
            labels = np.asarray([searchers[i].seed.label for i in live])[owner]
            diffs = (po[np.arange(len(rows)), labels] - pc[np.arange(len(rows)), labels]).astype(np.float64)
        else:
            diffs = output_difference(po, pc, 0, seed_label=False)
        margins = pair_margin(po, pc)
        vectors = novel = None
        if not config.drop_novelty:
            vectors = np.concatenate([po, pc], axis=1)
            novel = np.empty(len(rows), dtype=bool)
            for k, i in enumerate(live):
                corpus = searchers[i].corpus
                part = slice(starts[k], starts[k] + lengths[k])
                novel[part] = corpus.nearest_sq_distances(vectors[part]) > corpus.threshold  # type: ignore[union-attr]
        best_diff = np.asarray([searchers[i].best.diff for i in live])[owner]
        best_margin = np.asarray([searchers[i].best.margin for i in live])[owner]
        rejected = np.asarray([searchers[i].rejected_in_a_row for i in live])[owner] + \
            (np.arange(len(rows)) - starts[owner])
        kept, by_stall = _kept(config, best_diff, best_margin, rejected, diffs, margins, novel)
        # the first kept row of each seed (its length when none): a masked minimum per segment
        position = np.where(kept, np.arange(len(rows)) - starts[owner], np.iinfo(np.int64).max)
        first = np.minimum.reduceat(position, starts)
        for k, i in enumerate(live):
            searcher, n = searchers[i], int(lengths[k])
            j = int(first[k])
            if j >= n:
                searcher._consumed += n
                searcher.rejected_in_a_row += n
                consumed[i] = n
                continue
            row = int(starts[k]) + j
            searcher._consumed += j + 1
            searcher.rejected_in_a_row = 0
            searcher.stall_escapes += int(by_stall[row])
            if novel is not None and novel[row]:
                searcher.corpus.add(vectors[row])  # type: ignore[union-attr,index]
            searcher._keep(candidate_lists[i][j], Best(float(diffs[row]), float(margins[row])))
            searcher.end_step()  # later candidates were mutations of the image just replaced
            consumed[i] = j + 1
        return consumed

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

    def _keep(self, candidate: Candidate, best: Best) -> None:
        """Make a kept candidate the current image."""
        assert candidate.image is not None
        self.best = best
        self.current = candidate.image
        self.trace = candidate.full_trace
        self.last_op = candidate.tag
        self.selector.record_success(candidate.tag)
        self.accepted += 1

    def stats(self) -> dict:
        return {
            "accepted": self.accepted,
            "stall_escapes": self.stall_escapes,
            "corpus_size": 0 if self.corpus is None else self.corpus.size,
            "operator_uses": {op: int(n) for op, n in zip(self.ops, self.selector.uses)},
            "operator_successes": {op: int(n) for op, n in zip(self.ops, self.selector.successes)},
        }
