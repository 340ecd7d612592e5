"""Attack behaviours for experiments and the demo: never on by default (``make("none")``), chosen by name.

Every attack is one small class behind one interface with two hooks, and
changes only what its kind touches (the other hook passes its input through):

* ``data(images, labels, seed=)`` — a device poisoning its own data before
  extraction.  It acts on the images, (n, 28, 28, 1) float32 in [0, 1] as
  ``edgefl.ml.data.Dataset`` holds them, because that is what a device
  controls: the extractor is the released one, and the features it yields
  are normalised and privatised by code the device runs on what it gives it.
  Label flipping (source → target), label reversal (every class l →
  9 − l), random labels, noisy inputs (Gaussian
  pixel noise), backdoor (a trigger patch, labels → target;
  ``backdoor_test_set`` builds the triggered test set for the attack
  success rate).
* ``update(own, honest, origin=, seed=)`` — a participant replacing the
  model it sends: ``own`` its honest parameters, ``honest`` the honest
  updates it can see (full knowledge, as in the papers), ``origin`` the
  round's model.  Sign flipping, scaling, Gaussian, "a little is enough"
  (Baruch et al. 2019), and Fang et al. 2020's attacks on Krum and on the
  trimmed mean / median.  A byzantine fog applies one to its aggregate
  (``poison_aggregate``), its devices' models being what it sees; a device
  training on-device (``edgefl.fl.ondevice``) to the model it sends, the
  honest updates it sees being its own (``needs_peers``: models trained on
  shards of its own data, Fang et al.'s partial knowledge).

Everything is deterministic given ``seed`` (PCG64 seeded through SHA-256).
``choose_attackers(ids, fraction, seed)`` picks who attacks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar, Sequence

import numpy as np

from edgefl.errors import EdgeflError
from edgefl.fl import aggregate as agg

Params = Sequence[np.ndarray]


class AttackError(EdgeflError, ValueError):
    """An attack that cannot be set up as asked (unknown name, bad options)."""

    reason = "attack"



def rng_for(*parts: Any) -> np.random.Generator:
    h = hashlib.sha256(b"edgefl/attack")
    for p in parts:
        h.update(repr(p).encode() + b"\0")
    return np.random.Generator(np.random.PCG64(int.from_bytes(h.digest()[:16], "little")))


def _share(fraction: float, n: int) -> int:
    """round(fraction · n), halves up: how many of n items or participants a fraction means."""
    return math.floor(fraction * n + 0.5)


def choose_attackers(ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """round(fraction · n) of ``ids`` drawn at random by ``seed`` (the same whatever order ids come in), sorted."""
    if not 0 <= fraction <= 1:
        raise AttackError(f"malicious fraction must be in [0, 1], got {fraction}")
    pool = sorted(set(ids))
    k = _share(fraction, len(pool))
    return sorted(pool[i] for i in rng_for("attackers", seed, pool).permutation(len(pool))[:k])


def _flat(params: Params) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.float64).ravel() for p in params])


def _like(v: np.ndarray, params: Params) -> list[np.ndarray]:
    out, at = [], 0
    for p in params:
        p = np.asarray(p)
        out.append(v[at:at + p.size].reshape(p.shape).astype(p.dtype))
        at += p.size
    return out


class Attack:
    """Base of every behaviour: a frozen dataclass whose fields are its options; both hooks pass through."""

    name: ClassVar[str]
    kind: ClassVar[str] = "none"  # "data" or "update"
    needs_peers: ClassVar[bool] = False  # an update attack that works from the honest updates it sees

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def data(self, images: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return images, labels

    def update(self, own: Params, honest: Sequence[Params], *, origin: Params, seed: int = 0) -> list[np.ndarray]:
        return list(own)


@dataclass(frozen=True)
class NoAttack(Attack):
    name: ClassVar[str] = "none"


# --------------------------------------------------------------------------- data attacks


def _check_labels(*values: int) -> None:
    for v in values:
        if type(v) is not int or not 0 <= v < 10:
            raise AttackError(f"a class must be an integer in [0, 10), got {v!r}")


@dataclass(frozen=True)
class LabelFlip(Attack):
    """Every item of class ``source`` relabelled ``target`` (Tolpegin et al. 2020)."""

    name: ClassVar[str] = "labelflip"
    kind: ClassVar[str] = "data"
    source: int = 1
    target: int = 7

    def __post_init__(self):
        _check_labels(self.source, self.target)

    def data(self, images, labels, *, seed=0):
        labels = np.array(labels, copy=True)
        labels[labels == self.source] = self.target
        return images, labels


@dataclass(frozen=True)
class LabelReverse(Attack):
    """Every label l relabelled classes − 1 − l: the label flipping of Fang et al. 2020 and Cao et al. 2021."""

    name: ClassVar[str] = "labelreverse"
    kind: ClassVar[str] = "data"
    classes: int = 10

    def data(self, images, labels, *, seed=0):
        return images, (self.classes - 1 - np.asarray(labels)).astype(np.asarray(labels).dtype)


@dataclass(frozen=True)
class RandomLabels(Attack):
    """A ``fraction`` of the items (all by default) get a label drawn uniformly from the classes."""

    name: ClassVar[str] = "randomlabels"
    kind: ClassVar[str] = "data"
    fraction: float = 1.0
    classes: int = 10

    def data(self, images, labels, *, seed=0):
        rng = rng_for(self.name, seed)
        labels = np.array(labels, copy=True)
        rows = rng.permutation(len(labels))[:_share(self.fraction, len(labels))]
        labels[np.sort(rows)] = rng.integers(0, self.classes, len(rows))
        return images, labels


@dataclass(frozen=True)
class NoisyInputs(Attack):
    """Gaussian pixel noise of standard deviation ``sigma`` on every image, clipped back into [0, 1]."""

    name: ClassVar[str] = "noisy"
    kind: ClassVar[str] = "data"
    sigma: float = 0.5

    def data(self, images, labels, *, seed=0):
        noise = rng_for(self.name, seed).normal(0.0, self.sigma, np.shape(images))
        return np.clip(np.asarray(images, np.float64) + noise, 0.0, 1.0).astype(np.float32), labels


@dataclass(frozen=True)
class Backdoor(Attack):
    """Gu et al. 2017 (BadNets): a ``size``×``size`` white patch in the bottom-right corner of a ``fraction`` of
    the images (the whole set by default), each of those relabelled ``target``."""

    name: ClassVar[str] = "backdoor"
    kind: ClassVar[str] = "data"
    target: int = 0
    size: int = 4
    fraction: float = 0.5

    def __post_init__(self):
        _check_labels(self.target)

    def trigger(self, images: np.ndarray) -> np.ndarray:
        out = np.array(images, np.float32, copy=True)
        out[:, -self.size - 1:-1, -self.size - 1:-1] = 1.0
        return out

    def data(self, images, labels, *, seed=0):
        rows = np.sort(rng_for(self.name, seed).permutation(len(labels))[:_share(self.fraction, len(labels))])
        images, labels = np.array(images, np.float32, copy=True), np.array(labels, copy=True)
        images[rows] = self.trigger(images[rows])
        labels[rows] = self.target
        return images, labels


def backdoor_test_set(attack: Backdoor, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The test items not already of the target class, triggered, labelled ``target``: the accuracy on them
    is the attack success rate."""
    rows = np.asarray(labels) != attack.target
    return attack.trigger(np.asarray(images)[rows]), np.full(int(rows.sum()), attack.target, np.asarray(labels).dtype)


# --------------------------------------------------------------------------- update attacks


@dataclass(frozen=True)
class SignFlip(Attack):
    """Send origin − scale·(own − origin): the honest step, reversed."""

    name: ClassVar[str] = "signflip"
    kind: ClassVar[str] = "update"
    scale: float = 1.0

    def update(self, own, honest, *, origin, seed=0):
        o = _flat(origin)
        return _like(o - self.scale * (_flat(own) - o), own)


@dataclass(frozen=True)
class Scaling(Attack):
    """Send origin + factor·(own − origin) (boosting, as in Bagdasaryan et al.'s model replacement)."""

    name: ClassVar[str] = "scaling"
    kind: ClassVar[str] = "update"
    factor: float = 10.0

    def update(self, own, honest, *, origin, seed=0):
        o = _flat(origin)
        return _like(o + self.factor * (_flat(own) - o), own)


@dataclass(frozen=True)
class Gaussian(Attack):
    """Send origin + N(0, sigma²) in every coordinate, ignoring the data."""

    name: ClassVar[str] = "gaussian"
    kind: ClassVar[str] = "update"
    sigma: float = 1.0

    def update(self, own, honest, *, origin, seed=0):
        o = _flat(origin)
        return _like(o + rng_for(self.name, seed).normal(0.0, self.sigma, o.shape), own)


def _moments(honest: Sequence[Params]) -> tuple[np.ndarray, np.ndarray]:
    if not honest:
        raise AttackError("this attack needs the honest updates it can see; none were given")
    x = np.stack([_flat(h) for h in honest])
    return x.mean(axis=0), x.std(axis=0)


@dataclass(frozen=True)
class LittleIsEnough(Attack):
    """Baruch et al. 2019: per coordinate μ − z·σ of the honest updates, z = Φ⁻¹((n − s)/n) with
    s = ⌊n/2 + 1⌋ − f (n participants, f of them attacking), or ``z`` when given."""

    name: ClassVar[str] = "alie"
    kind: ClassVar[str] = "update"
    needs_peers: ClassVar[bool] = True
    n: int = 10
    f: int = 3
    z: float | None = None

    def z_max(self) -> float:
        if self.z is not None:
            return self.z
        s = math.floor(self.n / 2 + 1) - self.f
        return NormalDist().inv_cdf((self.n - s) / self.n)

    def update(self, own, honest, *, origin, seed=0):
        mu, sigma = _moments(honest)
        return _like(mu - self.z_max() * sigma, own)


@dataclass(frozen=True)
class Fang(Attack):
    """Fang et al. 2020's full-knowledge local model poisoning, against ``target``:

    * "krum": every attacker sends origin − λ·s, s the sign of the honest
      mean step, λ halved from the paper's upper bound until Krum (with the
      f copies among the honest updates) picks it (or λ < ``threshold``);
    * "trimmedmean" (also the median's): per coordinate, against the honest
      step's sign s_j, a value beyond the honest extreme: in [w_max, b·w_max]
      (or [w_max/b, w_max] when w_max ≤ 0) if s_j < 0, in [w_min/b, w_min]
      (or [b·w_min, w_min] when w_min ≤ 0) if s_j ≥ 0; drawn per attacker.
    """

    name: ClassVar[str] = "fang"
    kind: ClassVar[str] = "update"
    needs_peers: ClassVar[bool] = True
    target: str = "krum"
    f: int = 1
    b: float = 2.0
    threshold: float = 1e-5

    def __post_init__(self):
        if self.target not in ("krum", "trimmedmean"):
            raise AttackError(f"fang: target must be 'krum' or 'trimmedmean', got {self.target!r}")

    def update(self, own, honest, *, origin, seed=0):
        if not honest:
            raise AttackError("fang needs the honest updates it can see; none were given")
        o = _flat(origin)
        x = np.stack([_flat(h) for h in honest])
        s = np.sign(x.mean(axis=0) - o)
        if self.target == "krum":
            return _like(self._krum(x, o, s), own)
        hi, lo = x.max(axis=0), x.min(axis=0)
        u = rng_for(self.name, seed).random(o.shape)
        up = np.where(hi > 0, hi + u * (self.b - 1) * hi, hi / self.b + u * (hi - hi / self.b))  # above w_max
        down = np.where(lo > 0, lo / self.b + u * (lo - lo / self.b), self.b * lo + u * (lo - self.b * lo))
        return _like(np.where(s < 0, up, down), own)

    def _krum(self, x: np.ndarray, o: np.ndarray, s: np.ndarray) -> np.ndarray:
        m, c, d = len(x) + self.f, self.f, len(o)
        dist = [[math.sqrt(float(np.add.reduce((a - b) ** 2))) for b in x] for a in x]
        near = max(m - 2 * c - 1, 1)
        bound = min(math.fsum(sorted(r)[1:near + 1]) for r in dist) / (near * math.sqrt(d))
        lam = bound + max(math.sqrt(float(np.add.reduce((r - o) ** 2))) for r in x) / math.sqrt(d)
        krum = agg.Krum(f=c)
        while lam >= self.threshold:
            crafted = o - lam * s
            updates = [agg.Update([r]) for r in x] + [agg.Update([crafted])] * c
            try:
                if krum.aggregate(updates).kept[0] >= len(x):
                    return crafted
            except agg.AggregationError:
                return crafted  # too few to run Krum: nothing to evade
            lam /= 2
        return o - self.threshold * s


# --------------------------------------------------------------------------- the registry


ATTACKS: dict[str, type[Attack]] = {c.name: c for c in (NoAttack, LabelFlip, LabelReverse, RandomLabels, NoisyInputs,
                                                        Backdoor, SignFlip, Scaling, Gaussian, LittleIsEnough, Fang)}


def make(name: str = "none", **options) -> Attack:
    try:
        cls = ATTACKS[name]
    except KeyError:
        raise AttackError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise AttackError(f"attack {name!r}: {exc}") from None


def poison_aggregate(attack: Attack, aggregate: Params, inputs: Sequence[Params], *, origin: Params,
                     seed: int = 0) -> list[np.ndarray]:
    """A byzantine fog: the model it sends up in place of its honest aggregate, by an update attack over what it
    saw (its devices' models).  A data attack has nothing to act on here: the aggregate is returned as it is."""
    return attack.update(aggregate, inputs, origin=origin, seed=seed)
