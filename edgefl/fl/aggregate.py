"""Aggregators: combine participants' models into one, behind one small interface, chosen by name.

``make(name, **options)`` builds one from ``AGGREGATORS``; ``aggregate(updates,
origin=, reference=)`` returns a ``Result``: the parameters, the indices of
the updates that contribute (``kept``) and each update's share of the
aggregate (``weights``, one per update, 0 for a rejected one, summing to 1 —
FLTrust keeps the origin and shares nothing when no update points the
server's way).  A coordinate-wise aggregator's share of an update is the
fraction of all values averaged, over every coordinate, that came from it.

Every aggregator is a pure function of its updates in the order given, so
an aggregation recorded on a chain replays bit for bit
(``edgefl.fl.round.check_aggregation``): float64 accumulation in a fixed
order (numpy's pairwise sum over contiguous float64 for norms, never BLAS),
stable sorts, ties broken by index, a fixed iteration count.

``origin`` is the model the round started from: clipping and FLTrust work on
updates as differences from it, random selection seeds its draw with it
(the others are unchanged by a common shift of every input).
``reference`` is the server's own model for FLTrust (the origin trained on
the cloud's held-out data).  ``f`` is the number of byzantine updates an
aggregator is asked to survive; each checks its own condition on n and f,
and ``check(n)`` says ahead whether n inputs are enough.

Options have a canonical text form, ``["f=1", "inner=\\"krum\\""]`` (sorted,
each value a TOML scalar, defaults spelt out): what a ``Task`` names, an
``Aggregation`` records and ``ml.aggregator_options`` holds (``options_text``,
``parse_options``, ``describe``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from edgefl.errors import EdgeflError


class AggregationError(EdgeflError, ValueError):
    """Updates that cannot be combined (none, mismatched shapes, bad weights, too few for f)."""

    reason = "aggregation"


@dataclass(frozen=True)
class Update:
    """One participant's parameters and its weight (usually its number of training examples)."""

    params: Sequence[np.ndarray]
    weight: float = 1.0
    sender: str = ""


@dataclass(frozen=True)
class Result:
    params: list[np.ndarray]
    kept: list[int]  # indices of the updates that contribute, ascending
    weights: list[float]  # each update's share of the aggregate (0: rejected), summing to 1


# --------------------------------------------------------------------------- shared helpers


def _check(updates: Sequence[Update], origin: Sequence[np.ndarray] | None = None) -> None:
    if not updates:
        raise AggregationError("no updates to aggregate")
    shapes = [np.shape(p) for p in updates[0].params]
    for u in updates:
        if [np.shape(p) for p in u.params] != shapes:
            raise AggregationError(f"update from {u.sender or '?'} has shapes that differ from the first update's")
        if not (np.isfinite(u.weight) and u.weight > 0):
            raise AggregationError(f"update from {u.sender or '?'} has weight {u.weight}; weights must be positive")
    if origin is not None and [np.shape(p) for p in origin] != shapes:
        raise AggregationError("the origin's shapes differ from the updates'")


def _flat(params: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.float64).ravel() for p in params])


def _matrix(updates: Sequence[Update], origin: Sequence[np.ndarray] | None) -> np.ndarray:
    """Row i: update i (minus the origin, if given) flattened, float64, C-contiguous."""
    x = np.stack([_flat(u.params) for u in updates])
    if origin is not None:
        x -= _flat(origin)
    return x


def _unflat(v: np.ndarray, like: Sequence[np.ndarray], origin: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    if origin is not None:
        v = v + _flat(origin)
    out, at = [], 0
    for p in like:
        p = np.asarray(p)
        out.append(v[at:at + p.size].reshape(p.shape).astype(p.dtype))
        at += p.size
    return out


def _sq(v: np.ndarray) -> float:
    """Squared L2 norm, reduced by numpy's pairwise sum (not BLAS: the same on every machine)."""
    return float(np.add.reduce(v * v))


def _mean_rows(x: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Σ shares[i]·x[i] accumulated row by row in index order."""
    acc = np.zeros(x.shape[1], np.float64)
    for i in range(len(x)):
        if shares[i]:
            acc += shares[i] * x[i]
    return acc


def _result(updates, v, shares, origin) -> Result:
    shares = [float(s) for s in shares]
    return Result(_unflat(v, updates[0].params, origin), [i for i, s in enumerate(shares) if s > 0], shares)


def _need(ok: bool, name: str, rule: str, n: int, f: int) -> None:
    if not ok:
        raise AggregationError(f"{name} needs n ≥ {rule} updates for f byzantine ones: n = {n}, f = {f}")


# --------------------------------------------------------------------------- the interface


class Aggregator:
    """Base of every aggregator: a frozen dataclass whose fields are its options."""

    name: ClassVar[str]
    needs_reference: ClassVar[bool] = False  # takes the server's reference update (FLTrust)

    @classmethod
    def build(cls, **options) -> "Aggregator":
        return cls(**options)

    def options(self) -> dict[str, Any]:
        """Every option with defaults filled in (None: not set): what the record says was done."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def check(self, n: int) -> None:
        """Refuse (AggregationError naming n and f) a count of inputs this aggregator cannot survive f among."""
        if n < 1:
            raise AggregationError("no updates to aggregate")

    def aggregate(self, updates: Sequence[Update], *, origin: Sequence[np.ndarray] | None = None,
                  reference: Sequence[np.ndarray] | None = None) -> Result:
        raise NotImplementedError


def _counts(name: str, **values) -> None:
    for key, v in values.items():
        if v is not None and (type(v) is not int or v < 0):
            raise AggregationError(f"{name}: option {key} must be a non-negative integer, got {v!r}")


def _non_negative(name: str, **values) -> None:
    for key, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise AggregationError(f"{name}: option {key} must be a non-negative number, got {v!r}")


@dataclass(frozen=True)
class FedAvg(Aggregator):
    """McMahan et al. 2017: the weighted mean of the parameters, summed in float64 in the given order."""

    name: ClassVar[str] = "fedavg"

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        total = float(sum(u.weight for u in updates))
        shares = [u.weight / total for u in updates]
        out = []
        for i, first in enumerate(updates[0].params):
            acc = np.zeros(np.shape(first), np.float64)
            for s, u in zip(shares, updates):
                acc += s * np.asarray(u.params[i], np.float64)
            out.append(acc.astype(np.asarray(first).dtype))
        return Result(out, list(range(len(updates))), shares)


AGGREGATORS: dict[str, type[Aggregator]] = {FedAvg.name: FedAvg}


def register(cls: type[Aggregator]) -> type[Aggregator]:
    AGGREGATORS[cls.name] = cls
    return cls


def _distances(x: np.ndarray) -> np.ndarray:
    """Squared distances between every pair of rows (each pair once, each by the pairwise sum)."""
    n = len(x)
    d = np.zeros((n, n))
    for a in range(n):
        for b in range(a + 1, n):
            d[a, b] = d[b, a] = _sq(x[a] - x[b])
    return d


def _krum_scores(d: np.ndarray, rows: Sequence[int], f: int) -> list[float]:
    """Blanchard et al. 2017: each of ``rows``' sum of squared distances to its n − f − 2 nearest others among
    them (ascending; ``d`` from ``_distances``)."""
    sub = d[np.ix_(rows, rows)]
    nearest = max(len(rows) - f - 2, 1)  # ≥ 1: Bulyan's last picks still depend on the values, not the order
    return [math.fsum(np.sort(np.delete(sub[a], a))[:nearest]) for a in range(len(rows))]


def _by_score(scores: Sequence[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))  # ties: the lower index


class _Krum(Aggregator):
    """The weighted mean of the updates with the lowest Krum scores (how many: ``_count``)."""

    f: int

    def _count(self, n: int) -> int:
        raise NotImplementedError

    def check(self, n: int) -> None:
        _need(n >= 2 * self.f + 3, self.name, "2f+3", n, self.f)
        if not 1 <= self._count(n) <= n:
            raise AggregationError(f"{self.name} keeps m of n updates: m = {self._count(n)}, n = {n}")

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        self.check(n := len(updates))
        m, f = self._count(n), self.f
        x = _matrix(updates, None)
        chosen = sorted(_by_score(_krum_scores(_distances(x), list(range(n)), f))[:m])
        total = float(sum(updates[i].weight for i in chosen))
        shares = np.zeros(n)
        for i in chosen:
            shares[i] = updates[i].weight / total
        return _result(updates, _mean_rows(x, shares), shares, None)


@dataclass(frozen=True)
class Krum(_Krum):
    """Blanchard et al. 2017: the one update with the lowest score."""

    name: ClassVar[str] = "krum"
    f: int = 1

    def __post_init__(self):
        _counts(self.name, f=self.f)

    def _count(self, n: int) -> int:
        return 1


@dataclass(frozen=True)
class MultiKrum(_Krum):
    """Multi-Krum: the weighted mean of the m updates with the lowest scores (m = n − f when unset)."""

    name: ClassVar[str] = "multikrum"
    f: int = 1
    m: int | None = None

    def __post_init__(self):
        _counts(self.name, f=self.f, m=self.m)

    def _count(self, n: int) -> int:
        return n - self.f if self.m is None else self.m


def _coordinate_trim(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per coordinate, the mean of the values ranked k … n−k−1 (stable sort: ties by index); each row's share."""
    n = len(x)
    order = np.argsort(x, axis=0, kind="stable")
    kept = order[k:n - k]
    values = np.take_along_axis(x, kept, axis=0)
    acc = np.zeros(x.shape[1])
    for row in values:  # rank order: fixed
        acc += row
    counts = np.bincount(kept.ravel(), minlength=n)
    return acc / len(kept), counts / counts.sum()


@dataclass(frozen=True)
class TrimmedMean(Aggregator):
    """Yin et al. 2018: per coordinate, drop the k largest and k smallest values, average the rest (unweighted).

    k = f when ``f`` is set, otherwise ⌊β·n⌋.
    """

    name: ClassVar[str] = "trimmedmean"
    beta: float = 0.1
    f: int | None = None

    def __post_init__(self):
        _counts(self.name, f=self.f)
        _non_negative(self.name, beta=self.beta)
        if not self.beta < 0.5:
            raise AggregationError(f"trimmedmean: beta must be below 0.5, got {self.beta}")

    def options(self):
        return {"f": self.f} if self.f is not None else {"beta": self.beta}

    def _trimmed(self, n: int) -> int:
        return self.f if self.f is not None else math.floor(self.beta * n)

    def check(self, n: int) -> None:
        _need(n >= 2 * self._trimmed(n) + 1, self.name, "2f+1", n, self._trimmed(n))

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        self.check(len(updates))
        v, shares = _coordinate_trim(_matrix(updates, None), self._trimmed(len(updates)))
        return _result(updates, v, shares, None)


@dataclass(frozen=True)
class Median(Aggregator):
    """Coordinate-wise median (the mean of the middle two when n is even)."""

    name: ClassVar[str] = "median"

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        v, shares = _coordinate_trim(_matrix(updates, None), (len(updates) - 1) // 2)
        return _result(updates, v, shares, None)


@dataclass(frozen=True)
class Bulyan(Aggregator):
    """El Mhamdi et al. 2018: θ = n − 2f updates chosen by Krum one at a time, then per coordinate the mean of
    the β = θ − 2f values closest to their median."""

    name: ClassVar[str] = "bulyan"
    f: int = 1

    def __post_init__(self):
        _counts(self.name, f=self.f)

    def check(self, n: int) -> None:
        _need(n >= 4 * self.f + 3, self.name, "4f+3", n, self.f)

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        self.check(n := len(updates))
        f = self.f
        x = _matrix(updates, None)
        d, left, chosen = _distances(x), list(range(n)), []
        while len(chosen) < n - 2 * f:
            best = left[_by_score(_krum_scores(d, left, f))[0]]
            chosen.append(best)
            left.remove(best)
        chosen.sort()
        s = x[chosen]
        med, _ = _coordinate_trim(s, (len(s) - 1) // 2)
        beta = len(s) - 2 * f
        closest = np.argsort(np.abs(s - med), axis=0, kind="stable")[:beta]
        values = np.take_along_axis(s, closest, axis=0)
        acc = np.zeros(x.shape[1])
        for row in values:
            acc += row
        counts = np.bincount(np.asarray(chosen)[closest].ravel(), minlength=n)
        return _result(updates, acc / beta, counts / counts.sum(), None)


@dataclass(frozen=True)
class GeometricMedian(Aggregator):
    """RFA (Pillutla et al. 2022): the weighted geometric median by the smoothed Weiszfeld iteration.

    From the weighted mean, at most ``iterations`` steps, stopping once a step
    moves the estimate by at most ``tol`` (in parameter units: a relative rule
    would stop early while huge outliers dominate the objective); ``nu``
    floors each distance.  The result is Σ βᵢ xᵢ with the last step's
    weights βᵢ: those are the shares.
    """

    name: ClassVar[str] = "geomedian"
    iterations: int = 100
    tol: float = 1e-5
    nu: float = 1e-6

    def __post_init__(self):
        _counts(self.name, iterations=self.iterations)
        _non_negative(self.name, tol=self.tol, nu=self.nu)
        if self.nu <= 0 or self.iterations < 1:
            raise AggregationError("geomedian: nu must be positive and iterations at least 1")

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        x = _matrix(updates, None)
        total = float(sum(u.weight for u in updates))
        alpha = [u.weight / total for u in updates]
        shares = np.array(alpha)
        z = _mean_rows(x, shares)
        for _ in range(self.iterations):
            beta = np.array([a / max(self.nu, math.sqrt(_sq(z - r))) for a, r in zip(alpha, x)])
            shares = beta / math.fsum(beta)
            z, last = _mean_rows(x, shares), z
            if math.sqrt(_sq(z - last)) <= self.tol:
                break
        return _result(updates, z, shares, None)


@dataclass(frozen=True)
class FLTrust(Aggregator):
    """Cao et al. 2021: trust each update by ReLU(cos) to the server's own update, rescale it to the server's norm.

    Needs ``reference`` (the origin trained on the server's root data: the
    cloud's held-out data).  No positively aligned update: the origin, nothing kept.
    """

    name: ClassVar[str] = "fltrust"
    needs_reference: ClassVar[bool] = True

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        if reference is None:
            raise AggregationError("fltrust needs the server's reference update (its root data); none was given")
        _check([Update(reference)], updates[0].params)
        x = _matrix(updates, origin)
        g0 = _flat(reference) - (_flat(origin) if origin is not None else 0.0)
        n0 = math.sqrt(_sq(g0))
        trust, scaled = np.zeros(len(x)), np.zeros(len(x))
        for i, g in enumerate(x):
            ni = math.sqrt(_sq(g))
            if ni > 0 and n0 > 0:
                trust[i] = max(0.0, float(np.add.reduce(g * g0)) / (ni * n0))
                scaled[i] = n0 / ni
        total = math.fsum(trust)
        shares = trust / total if total > 0 else trust
        return _result(updates, _mean_rows(x, shares * scaled), shares, origin)


@dataclass(frozen=True)
class Clip(Aggregator):
    """Norm clipping around any aggregator: each update's difference from the origin scaled to norm ≤ max_norm.

    ``make("clip", max_norm=5.0, inner="krum", f=1)``: options other than
    ``max_norm`` and ``inner`` are the inner aggregator's.
    """

    name: ClassVar[str] = "clip"
    max_norm: float = 1.0
    inner: Aggregator = dataclasses.field(default_factory=FedAvg)

    @classmethod
    def build(cls, max_norm: float = 1.0, inner: str = "fedavg", **inner_options) -> "Clip":
        if inner == cls.name:
            raise AggregationError("clip: the inner aggregator cannot be clip itself")
        return cls(max_norm, make(inner, **inner_options))

    def __post_init__(self):
        if not (isinstance(self.max_norm, (int, float)) and self.max_norm > 0):
            raise AggregationError(f"clip: max_norm must be positive, got {self.max_norm!r}")

    @property
    def needs_reference(self) -> bool:
        return self.inner.needs_reference

    def options(self):
        return {"max_norm": float(self.max_norm), "inner": self.inner.name, **self.inner.options()}

    def check(self, n: int) -> None:
        self.inner.check(n)

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        clipped = [Update(clip_to_norm(u.params, origin, self.max_norm), u.weight, u.sender) for u in updates]
        return self.inner.aggregate(clipped, origin=origin, reference=reference)


def clip_to_norm(params: Sequence[np.ndarray], origin: Sequence[np.ndarray] | None,
                 max_norm: float) -> list[np.ndarray]:
    """``params`` with its step from ``origin`` (from 0 without one) scaled to L2 norm ``max_norm`` if longer,
    unchanged otherwise: the rule of ``Clip`` and of an on-device update (``edgefl.fl.ondevice``)."""
    g = _flat(params) - (_flat(origin) if origin is not None else 0.0)
    norm = math.sqrt(_sq(g))
    if norm <= max_norm:
        return [np.asarray(p) for p in params]
    return _unflat(g * (max_norm / norm), params, origin)


@dataclass(frozen=True)
class RandomSelection(Aggregator):
    """The blockchain-FL baseline: FedAvg over ⌈fraction·n⌉ updates drawn at random, without replacement.

    The draw is seeded by ``seed``, the senders and the origin's bytes, so it
    changes from round to round and replays from the record.
    """

    name: ClassVar[str] = "random"
    fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        _counts(self.name, seed=self.seed)
        _non_negative(self.name, fraction=self.fraction)
        if not 0 < self.fraction <= 1:
            raise AggregationError(f"random: fraction must be in (0, 1], got {self.fraction}")

    def aggregate(self, updates, *, origin=None, reference=None) -> Result:
        _check(updates, origin)
        n = len(updates)
        h = hashlib.sha256(b"edgefl/random-selection/%d" % self.seed)
        for u in updates:
            h.update(u.sender.encode() + b"\0")
        for p in origin or ():
            h.update(np.ascontiguousarray(p).tobytes())
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(h.digest()[:16], "little")))
        chosen = sorted(int(i) for i in rng.permutation(n)[:max(1, math.ceil(self.fraction * n))])
        inner = FedAvg().aggregate([updates[i] for i in chosen])
        shares = np.zeros(n)
        shares[chosen] = inner.weights
        return Result(inner.params, chosen, [float(s) for s in shares])


for _cls in (MultiKrum, Krum, TrimmedMean, Median, Bulyan, GeometricMedian, FLTrust, Clip, RandomSelection):
    register(_cls)


def make(name: str, **options) -> Aggregator:
    """The aggregator ``name`` with ``options``; a typed error names an unknown name or option."""
    try:
        cls = AGGREGATORS[name]
    except KeyError:
        raise AggregationError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}") from None
    try:
        return cls.build(**options)
    except TypeError as exc:
        raise AggregationError(f"aggregator {name!r}: {exc}") from None


# --------------------------------------------------------------------------- canonical options


def options_text(options: dict[str, Any]) -> list[str]:
    """Canonical ``key=value`` strings, sorted by key; each value a TOML scalar (floats by repr)."""
    out = []
    for key in sorted(options):
        v = options[key]
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, int):
            text = str(v)
        elif isinstance(v, float):
            text = repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        elif isinstance(v, str):
            text = json.dumps(v)
        else:
            raise AggregationError(f"option {key}: {v!r} is not a number, boolean or string")
        out.append(f"{key}={text}")
    return out


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """The inverse of ``options_text`` (an unquoted word is taken as a string, as in the config)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise AggregationError(f"aggregator option {item!r}: expected key=value")
        try:
            out[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw.strip()
    return out


def describe(agg: Aggregator) -> tuple[str, list[str]]:
    """(name, canonical options): ``make(name, **parse_options(options))`` rebuilds ``agg``."""
    return agg.name, options_text(agg.options())


def from_spec(name: str, options: Sequence[str]) -> Aggregator:
    return make(name, **parse_options(options))
