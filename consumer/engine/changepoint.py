"""The change-point model: where in a range of commits does the error's rate go up?

A run at commit ``x`` shows our error with probability ``p`` when the first bad commit
``c`` is an ancestor-or-self of ``x`` ("after"), and with probability ``q`` otherwise
("before"); ``q < p``. Both rates are unknown and learnt from the runs, so one model covers
a deterministic test (``p = 1, q = 0``), a flaky one (``p < 1``) and an error that already
showed now and then before the regression (``q > 0``). Runs that end in another error, a
timeout or exit 125 say nothing about either rate and are not counted here.

Hypotheses: every commit of the range, plus :data:`GOOD_SIDE`, "the regression is at or
before the good commit(s)" (the range was given wrong). Runs on commits outside the range
(the good commits, a culprit's parent outside it) are "after" only for that one.

Prior: uniform over the range's commits and the good side (one more hypothesis); ``p``
and ``q`` independent on the grid :data:`RATES` with ``q < p``: ``p = 1`` (the error always
shows on a bad commit) with probability :data:`P_ALWAYS`, else uniform; ``q = 0`` (never
before the regression) with :data:`Q_NEVER`, else uniform up to :data:`Q_MAX`. The rates
are integrated out on the grid, so the posterior of the culprit is exact for this prior
whatever rule chose which commit to run or when to stop (the likelihood principle):
retesting a commit "until the error shows" leaves the estimates of ``p`` and ``q``
unbiased in this sense.

Commits whose "after" sets of tested commits are equal have equal likelihood, so the
posterior is kept per *class* of candidates (bitsets over the DAG order), split when a
commit is tested for the first time: the cost follows the tested commits, not the range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from consumer.engine.dag import Dag

GOOD_SIDE = "<good side>"  # the hypothesis "the first bad commit is not in the range"

# The rate grid: both p (from 0.02) and q (up to 0.9) take these values; it holds the
# rates a user meets (5 %, 10 %, 30 % flakes) and 0 and 1 exactly.
RATES: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Prior P(p = 1). Most tests are deterministic, but a larger mass made a flaky test's runs
# that happened to agree look deterministic: answers at 0.975 were wrong 7 % of the time
# (p = 0.8, q = 0.3). A deterministic test's answer stands on its verified agreement
# (adaptive.CONSISTENT_FLOOR), not on this prior.
P_ALWAYS = 0.15
# P(q = 0): many errors never show before their regression, but a prior leaning to q = 0
# makes false errors on good commits look telling. At 0.3, a good commit that showed the
# error three or four times in a row was taken for the culprit at 0.985+ (N = 1000, p = 0.8,
# q = 0.3: 93.5 % right); at 0.15, 99 %, with 135 wrong culprits over the calibration grid
# against 167 and no more runs (bench/engine_calibration.py).
Q_NEVER = 0.15
Q_MAX = 0.5  # an error showing in more runs than this before its regression is no regression
_NEG_INF = float("-inf")
_LOG_R = tuple(math.log(r) if r > 0 else _NEG_INF for r in RATES)
_LOG_1MR = tuple(math.log1p(-r) if r < 1 else _NEG_INF for r in RATES)


def _prior_weights() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``u`` over p (index 0, rate 0, has weight 0) and ``v`` over q (the last, rate 1, 0).

    Besides the point masses, flat: a prior that leans towards high ``p`` or low ``q``
    makes a good run (or a bad one) look like stronger evidence than it is, and the
    reported confidence too high on exactly the flaky tests where it matters.
    """
    inner = RATES[1:-1]
    low_q = [r for r in inner if r <= Q_MAX]
    u = [0.0] + [(1.0 - P_ALWAYS) / len(inner)] * len(inner) + [P_ALWAYS]
    v = [Q_NEVER] + [(1.0 - Q_NEVER) / len(low_q) if r <= Q_MAX else 0.0
                     for r in inner] + [0.0]
    return tuple(u), tuple(v)


_U, _V = _prior_weights()


@lru_cache(maxsize=65536)
def _side(k: int, n: int) -> tuple[float, ...]:
    """log of ``r^k (1 - r)^(n - k)`` for each rate ``r`` of the grid."""
    out = []
    for lr, l1r in zip(_LOG_R, _LOG_1MR, strict=True):
        a = 0.0 if k == 0 else k * lr
        b = 0.0 if n == k else (n - k) * l1r
        out.append(a + b)
    return tuple(out)


@lru_cache(maxsize=262144)
def class_likelihood(k_after: int, n_after: int, k_before: int, n_before: int
                     ) -> tuple[float, float, float]:
    """``(log L, E[p], E[q])`` of one culprit hypothesis with these run counts.

    ``L = sum_i u_i f_i sum_{j < i} v_j g_j`` (``f``, ``g`` the likelihoods of the after and
    before runs at grid rate ``i``, ``j``): the constraint ``q < p`` is a prefix sum.
    """
    f = _side(k_after, n_after)
    g = _side(k_before, n_before)
    f_top = max(f)
    g_top = max(g)
    if f_top == _NEG_INF or g_top == _NEG_INF:
        return _NEG_INF, 0.0, 0.0
    total = p_sum = q_sum = 0.0
    below = below_q = 0.0  # sum_{j < i} v_j g_j, and the same times q_j
    for i, rate in enumerate(RATES):
        if i > 0:
            fi = _U[i] * math.exp(f[i] - f_top) if f[i] != _NEG_INF else 0.0
            if fi and below:
                total += fi * below
                p_sum += fi * below * rate
                q_sum += fi * below_q
        gj = _V[i] * math.exp(g[i] - g_top) if g[i] != _NEG_INF else 0.0
        below += gj
        below_q += gj * rate
    if total <= 0.0:
        return _NEG_INF, 0.0, 0.0
    return math.log(total) + f_top + g_top, p_sum / total, q_sum / total


@dataclass(frozen=True)
class Counts:
    runs: int = 0  # usable runs (good or bad)
    bad_runs: int = 0
    skips: int = 0


@dataclass
class _Class:
    mask: int  # members, a bitset over the DAG order (0 for GOOD_SIDE)
    size: int
    n_after: int = 0  # usable runs on tested commits every member is an ancestor-or-self of
    k_after: int = 0
    log_post: float = 0.0
    p_mean: float = 0.0
    q_mean: float = 0.0


@dataclass(frozen=True)
class RunSplit:
    """Usable runs after a hypothesis (the first bad commit) and before it."""

    after_runs: int
    after_bad: int
    before_runs: int
    before_bad: int


@dataclass(frozen=True)
class Rates:
    """Posterior means of the two rates."""

    bad: float  # p: on commits after the first bad one
    good: float  # q: before it


def _entropy(x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0
    return -(x * math.log2(x) + (1.0 - x) * math.log2(1.0 - x))


def information(after: float, rates: Rates) -> float:
    """Bits one run at a commit with P(after) = ``after`` tells about the culprit."""
    p, q = rates.bad, rates.good
    return _entropy(after * p + (1 - after) * q) - after * _entropy(p) - (1 - after) * _entropy(q)


def best_after(rates: Rates) -> float:
    """The P(after) of the most informative commit for these rates (closed form)."""
    p, q = rates.bad, rates.good
    if p - q < 1e-6:
        return 0.5
    hp, hq = _entropy(p), _entropy(q)
    slope = (hp - hq) / (p - q)  # H'(m) = log2((1 - m) / m) at the best mixture m
    m = 1.0 / (1.0 + 2.0 ** slope)
    return min(1.0, max(0.0, (m - q) / (p - q)))


def capacity(rates: Rates) -> float:
    """Bits per usable run at the best commit: the channel capacity for these rates."""
    return information(best_after(rates), rates)


class ChangePoint:
    """The posterior over the first bad commit of a range (and the good side)."""

    def __init__(self, dag: Dag, bad: str, goods: Sequence[str] = ()) -> None:
        if bad not in dag:
            raise ValueError(f"bad commit {bad} is not in the range")
        self.dag = dag
        self.bad = bad
        self.goods = tuple(goods)
        order = dag.order
        self._bit = {commit: 1 << i for i, commit in enumerate(order)}
        self._anc: dict[str, int] = {}
        for commit in reversed(order):  # parents first
            bits = self._bit[commit]
            for parent in dag.parents(commit):
                bits |= self._anc[parent]
            self._anc[commit] = bits
        self.candidates = self._anc[bad]
        self.size = self.candidates.bit_count()
        self.linear = all(len(dag.parents(c)) <= 1 for c in order) and all(
            dag.parents(c) == (order[i + 1],) for i, c in enumerate(order[:-1])
        )
        # The good side weighs as much as one commit: a deterministic search then halves
        # ``size + 1`` hypotheses, and one run at the good commit settles it.
        self._range_prior = -math.log(self.size + 1)
        # No good commit (the walk back reached the root): there is no good side.
        self._good_prior = self._range_prior if self.goods else _NEG_INF
        self._good_side = _Class(0, 1)
        self._classes = [_Class(self.candidates, self.size)]
        self.counts: dict[str, Counts] = {}
        self._n = 0  # usable runs in all
        self._k = 0
        self._dirty = True
        self._mass: list[float] = []
        self._good_mass = 0.0

    # -- evidence ----------------------------------------------------------------------------

    def in_range(self, commit: str) -> bool:
        return bool(self.candidates & self._bit.get(commit, 0))

    def record(self, commit: str, runs: int, bad_runs: int, skips: int = 0) -> None:
        """Add usable runs (``bad_runs`` of them showed the error) and skipped runs."""
        old = self.counts.get(commit, Counts())
        self.counts[commit] = Counts(old.runs + runs, old.bad_runs + bad_runs, old.skips + skips)
        if runs <= 0:
            return
        if self.in_range(commit):
            if old.runs == 0:
                self._split(commit)
            anc = self._anc[commit]
            for cls in self._classes:
                if cls.mask & anc:
                    cls.n_after += runs
                    cls.k_after += bad_runs
        self._good_side.n_after += runs  # every tested commit is after the good side
        self._good_side.k_after += bad_runs
        self._n += runs
        self._k += bad_runs
        self._dirty = True

    def _split(self, tested: str) -> None:
        anc = self._anc[tested]
        classes: list[_Class] = []
        for cls in self._classes:
            inside = cls.mask & anc
            outside = cls.mask & ~anc
            if inside and outside:
                classes.append(_Class(inside, inside.bit_count(), cls.n_after, cls.k_after))
                classes.append(_Class(outside, outside.bit_count(), cls.n_after, cls.k_after))
            else:
                classes.append(cls)
        self._classes = classes

    # -- posterior ---------------------------------------------------------------------------

    def _update(self) -> None:
        if not self._dirty:
            return
        logs = []
        for cls in [*self._classes, self._good_side]:
            log_l, cls.p_mean, cls.q_mean = class_likelihood(
                cls.k_after, cls.n_after, self._k - cls.k_after, self._n - cls.n_after)
            prior = self._good_prior if cls is self._good_side else (
                self._range_prior + math.log(cls.size))
            cls.log_post = log_l + prior
            logs.append(cls.log_post)
        top = max(logs)
        weights = [math.exp(v - top) if v != _NEG_INF else 0.0 for v in logs]
        if top == _NEG_INF:  # cannot happen with usable runs; keep the prior
            weights = [float(c.size) for c in self._classes] + [0.0]
        norm = sum(weights)
        self._mass = [w / norm for w in weights[:-1]]
        self._good_mass = weights[-1] / norm
        self._dirty = False

    def _class_of(self, hypothesis: str) -> _Class:
        if hypothesis == GOOD_SIDE:
            return self._good_side
        bit = self._bit.get(hypothesis, 0)
        return next(c for c in self._classes if c.mask & bit)

    def consistent_step(self, hypothesis: str) -> bool:
        """Whether every run agrees with a deterministic test failing from ``hypothesis`` on:
        the error in every run after it and in none before (and at least one run each side
        of its class, so the runs do pin it)."""
        cls = self._class_of(hypothesis)
        return cls.k_after == cls.n_after == self._k

    def split(self, hypothesis: str) -> RunSplit:
        """The usable runs (known verdicts included) after ``hypothesis`` and before it,
        and how many of each showed the error: what its rates are estimated from."""
        cls = self._class_of(hypothesis)
        return RunSplit(cls.n_after, cls.k_after, self._n - cls.n_after, self._k - cls.k_after)

    def good_side_probability(self) -> float:
        self._update()
        return self._good_mass

    def rates(self) -> Rates:
        self._update()
        p = self._good_mass * self._good_side.p_mean
        q = self._good_mass * self._good_side.q_mean
        for cls, mass in zip(self._classes, self._mass, strict=True):
            p += mass * cls.p_mean
            q += mass * cls.q_mean
        return Rates(p, q)

    def probability(self, commit: str) -> float:
        """P(``commit`` is the first bad commit); :data:`GOOD_SIDE` works too."""
        self._update()
        if commit == GOOD_SIDE:
            return self._good_mass
        bit = self._bit.get(commit, 0)
        for cls, mass in zip(self._classes, self._mass, strict=True):
            if cls.mask & bit:
                return mass / cls.size
        return 0.0

    def best(self) -> tuple[str, float]:
        """The most likely hypothesis (the oldest member of the best class) and its P."""
        self._update()
        share, cls = max(((m / c.size, c) for c, m in zip(self._classes, self._mass,
                                                          strict=True)), key=lambda t: t[0])
        if self._good_mass > share:
            return GOOD_SIDE, self._good_mass
        members = self._members(cls.mask)
        return max(members, key=self.dag.position), share

    def ranked(self, limit: int = 50) -> list[tuple[str, float]]:
        """The most likely hypotheses, most likely first (ties: newest first)."""
        self._update()
        pairs = sorted(zip(self._classes, self._mass, strict=True),
                       key=lambda cm: -cm[1] / cm[0].size)
        out: list[tuple[str, float]] = [(GOOD_SIDE, self._good_mass)]
        position = self.dag.position
        for cls, mass in pairs:
            if len(out) > limit and mass / cls.size < out[-1][1]:
                break
            members = sorted(self._members(cls.mask, limit + 1), key=position)
            out.extend((m, mass / cls.size) for m in members)
        out.sort(key=lambda kv: -kv[1])
        return out[:limit]

    def credible_set(self, level: float, limit: int = 50) -> list[str]:
        """The fewest most likely hypotheses whose probabilities add up to ``level``."""
        chosen: list[str] = []
        total = 0.0
        for commit, prob in self.ranked(limit):
            chosen.append(commit)
            total += prob
            if total >= level - 1e-12:
                break
        return chosen

    def entropy_bits(self) -> float:
        self._update()
        h = -self._good_mass * math.log2(self._good_mass) if self._good_mass > 0 else 0.0
        for cls, mass in zip(self._classes, self._mass, strict=True):
            if mass > 0:
                h -= mass * math.log2(mass / cls.size)
        return h

    def _members(self, mask: int, limit: int | None = None) -> list[str]:
        order = self.dag.order
        out: list[str] = []
        while mask and (limit is None or len(out) < limit):
            low = mask & -mask
            out.append(order[low.bit_length() - 1])
            mask ^= low
        return out

    # -- P(after) for choosing commits -------------------------------------------------------

    def after_probability(self, commit: str) -> float:
        """P(the culprit is an ancestor-or-self of ``commit``): its runs are "after" runs.

        A commit outside the range is after only the good side.
        """
        self._update()
        if not self.in_range(commit):
            return self._good_mass
        anc = self._anc[commit]
        total = self._good_mass
        for cls, mass in zip(self._classes, self._mass, strict=True):
            if mass > 1e-15:
                shared = cls.mask & anc
                if shared == cls.mask:
                    total += mass
                elif shared:
                    total += mass * shared.bit_count() / cls.size
        return min(1.0, total)

    def _terms(self, cls: _Class, mass: float) -> tuple[float, float, float, float]:
        """``mass`` times (p, H(p), q, H(q)) of a class's posterior predictive rates."""
        return (mass * cls.p_mean, mass * _entropy(cls.p_mean),
                mass * cls.q_mean, mass * _entropy(cls.q_mean))

    def information_map(self, spread: int = 4) -> dict[str, float]:
        """Bits a run at each commit worth considering tells about the culprit.

        The mutual information between the run's outcome and the hypothesis, each
        hypothesis predicting its own rates (``E[p]`` after it, ``E[q]`` before it): so a
        run that tells two explanations of the runs apart (a late culprit with a high
        ``q``, an early one with a low ``p``) is worth its bits. On a DAG every candidate
        is considered; on a linear history, where the information is concave along each
        class, its best member and ``spread`` neighbours, the class's ends, and the good
        commits.
        """
        self._update()
        g_terms = self._terms(self._good_side, self._good_mass)
        per_class = [self._terms(c, m) for c, m in zip(self._classes, self._mass, strict=True)]
        t_q = g_terms[2] + sum(t[2] for t in per_class)
        t_qh = g_terms[3] + sum(t[3] for t in per_class)

        def bits(after: Sequence[float]) -> float:
            mix = after[0] + t_q - after[2]
            return _entropy(mix) - (after[1] + t_qh - after[3])

        out = dict.fromkeys(self.goods, bits(g_terms))
        if not self.linear:
            for commit in self._members(self.candidates):
                anc = self._anc[commit]
                acc = list(g_terms)
                for cls, terms in zip(self._classes, per_class, strict=True):
                    shared = cls.mask & anc
                    if shared:
                        share = 1.0 if shared == cls.mask else shared.bit_count() / cls.size
                        for k in range(4):
                            acc[k] += share * terms[k]
                out[commit] = bits(acc)
            return out
        order = self.dag.order
        spans = sorted(zip(self._classes, per_class, strict=True),
                       key=lambda ct: -ct[0].mask.bit_length())  # oldest class first
        below = list(g_terms)
        for cls, terms in spans:
            oldest = cls.mask.bit_length() - 1
            size = cls.size
            step = [t / size for t in terms]

            def at(j: int, below: list[float] = below, step: list[float] = step) -> float:
                # the member j places newer than the class's oldest: j + 1 members after
                return bits([below[k] + (j + 1) * step[k] for k in range(4)])

            lo, hi = 0, size - 1
            while hi - lo > 2:  # concave in j: ternary search
                m1 = lo + (hi - lo) // 3
                m2 = hi - (hi - lo) // 3
                if at(m1) < at(m2):
                    lo = m1 + 1
                else:
                    hi = m2 - 1
            best = lo
            picks = set(range(max(0, best - spread), min(size - 1, best + spread) + 1))
            picks |= {0, size - 1}
            for j in picks:
                out[order[oldest - j]] = at(j)
            for k in range(4):
                below[k] += terms[k]
        return out

    def can_split(self, members: Sequence[str], commits: Iterable[str]) -> bool:
        """Whether a run at one of ``commits`` can tell some of ``members`` (hypotheses,
        :data:`GOOD_SIDE` included) from the others: one is after it and another is not."""
        mask = 0
        for member in members:
            mask |= self._bit.get(member, 0) if self.in_range(member) else 0
        has_good_side = GOOD_SIDE in members
        if not mask:
            return False  # the good side alone, or nothing
        for commit in commits:
            if not self.in_range(commit):
                if has_good_side and commit in self.goods:
                    return True  # after the good side only
                continue
            shared = self._anc[commit] & mask
            if shared != mask and (shared or has_good_side):
                return True
        return False
