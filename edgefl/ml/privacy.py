"""Differential privacy on the device: normalisation, secure Laplace noise, the ε accountant.

What ε protects
---------------
Each image's feature vector is scaled linearly into [−B, B] with
B = √(N−1) (N the batch size), so one normalised feature value moves by at most
Δ = 2B.  With ``privacy_unit = "feature"`` (the design's unit) Laplace noise of
scale Δ/ε is added to every coordinate: a change of **one feature value** of
one image is hidden at ε.  A whole image changes all d = 3,920 values, so by
composition an image is protected only at d·ε.  ``privacy_unit = "record"``
protects a whole image at ε: the sensitivity is the L1 norm of the whole
vector, d·Δ, and the noise scale d·Δ/ε — far more noise.  Labels are sent in
the clear in both units, as in the design.

Secure sampling
---------------
Textbook Laplace sampling (``b·sign(u)·log(1−2|u|)`` in floating point) is
porous: which floats can come out depends on the noiseless value, and Mironov
(CCS 2012) recovers it from the low bits.  Here the value is first rounded to
a power-of-two grid g, and the noise is an integer K from the two-sided
geometric (discrete Laplace) distribution P(K=k) ∝ α^|k|, α = exp(−ε/Δ_g),
where Δ_g is the sensitivity in grid steps: the output g·(round(x/g) + K) lies
on the grid whatever x was, as in Google's and OpenDP's libraries.  K is
sampled vectorised: per coordinate one 64-bit random word gives a sign bit
and a 63-bit integer j, U = (j + ½)·2^-63 (rounded to float64) is uniform on
(0, 1], G = ⌊−ln(U)·s⌋ is geometric (s = Δ_g/ε), and (negative, 0) draws are
redrawn so zero is not counted twice.  The loops are fused in a compiled
kernel (``ext/noise.pyx``) with a bit-identical numpy twin.

What the sampler guarantees is computed, not estimated: its approximations
(U's resolution, the logarithm's rounding, the tail cut at 64·ln 2 ≈ 44.4
scale units where U = 2^-64) do not depend on the data, and
``sampler_pmf(s)`` finds every probability of the sampler as implemented, by
bisection over the words through the kernel itself; ``sampler_delta`` gives
the δ for which it is (ε, δ)-DP.  For the feature unit at N = 64, per
coordinate and release: δ ≈ 4·10^-13 at ε = 1 and 4·10^-11 at ε = 10
(``edgefl bench ml``, rows ``laplace_delta_eps*``).  So the guarantee is
(ε, δ)-DP with such δ — no floating-point sampler short of exact rational
arithmetic is purely ε-DP.

The random words
----------------
``randbytes`` names the source of the words (``ml.noise_source``):

* ``"chacha20"`` (default): for every call, a fresh 256-bit key from the OS
  CSPRNG (``os.urandom``, i.e. getrandom) and the ChaCha20 keystream under
  that key (RFC 8439, zero nonce and counter; each key is used for one
  stream only, at most a few tens of MB).  Security argument: if ChaCha20's
  block function is a pseudorandom function — the assumption behind Linux's
  own getrandom, whose output is a ChaCha20 keystream as well, and behind
  OpenBSD's arc4random — no efficient observer can tell the words from
  uniform ones except with negligible advantage, so the guarantee above
  holds against computationally bounded observers (computational DP,
  Mironov, Pandey, Reingold and Vadhan, CRYPTO 2009), up to that negligible
  advantage.  No generator state outlives a call, so a forked process or a
  restart cannot repeat a stream.  The key lives in process memory during
  the call (beside the noiseless features, which matter more) and is not
  stored, logged or sent; Python cannot promise to wipe it.  Against an
  unbounded adversary neither source gives information-theoretic DP: the
  kernel's generator is a stream cipher too.
* ``"urandom"``: every word read from ``os.urandom`` (the same assumption, on
  Linux, one system call per batch; about 8× slower here).
* a callable ``randbytes(n) -> bytes`` (tests replay a fixed stream).

The accountant
--------------
``PrivacyAccountant`` tracks ε spent per data item across rounds (sequential
composition), refuses any release that would take an item past the budget
(from the profile), persists what was spent, and hands a ``PrivacySpend``
record to a recorder — the ledger — before the data leaves the device.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Iterable, Protocol, Sequence

import numpy as np

from edgefl import codec, native
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import merkle_root
from edgefl.errors import EdgeflError
from edgefl.runtime import write_atomic

log = logging.getLogger("edgefl.ml.privacy")
_kernel = native.load("noise")

UNITS = ("feature", "record")
GRID_BITS = 12  # grid step = 2^-12 of the smaller of the bound and the noise scale (rounded to a power of two)
MAX_EPSILON = 1000.0
MAX_SCALE = 2.0 ** 40  # geometric scale in grid steps: every draw (< 37 scales) stays an exact float64 integer


class PrivacyError(EdgeflError, ValueError):
    reason = "privacy"


class BudgetExceeded(PrivacyError):
    """A release would take items past their ε budget; nothing was charged or released."""

    reason = "budget_exceeded"

    def __init__(self, items: Sequence[int], budget: float):
        shown = ", ".join(map(str, list(items)[:5])) + (" …" if len(items) > 5 else "")
        super().__init__(f"{len(items)} item(s) would exceed the ε budget {budget:g}: {shown}")
        self.items = list(items)


def bound(batch_size: int) -> float:
    """B = √(N−1): features are normalised into [−B, B]."""
    if batch_size < 2:
        raise PrivacyError(f"batch size {batch_size}: the normalisation bound √(N−1) needs N ≥ 2")
    return math.sqrt(batch_size - 1)


def normalise(features: np.ndarray, batch_size: int) -> np.ndarray:
    """Scale each row linearly onto [−B, B] (min → −B, max → B; a constant row → 0), float64."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] == 0:
        raise PrivacyError(f"features must be (n, d) with d ≥ 1, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise PrivacyError("features contain NaN or infinity")
    return _kernel.normalise(np.ascontiguousarray(x), bound(batch_size))


def batch_normalise(features: np.ndarray, batch_size: int) -> np.ndarray:
    """Jiang et al.'s batch normalisation, the design's comparison: every run of ``batch_size`` rows
    standardised per coordinate (mean 0, variance 1 over those rows; a constant coordinate → 0), float64.

    By Samuelson's inequality a value standardised among n ≤ N lies in
    [−√(n−1), √(n−1)] ⊆ [−B, B], so the same noise scale applies.  Unlike
    ``normalise`` a row's output depends on the other rows of its batch.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise PrivacyError(f"features must be (n, d) with d ≥ 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise PrivacyError("features contain NaN or infinity")
    b = bound(batch_size)
    out = np.empty_like(x)
    for at in range(0, len(x), batch_size):
        chunk = x[at:at + batch_size]
        centred = chunk - chunk.mean(axis=0)
        sd = np.sqrt((centred ** 2).mean(axis=0))
        z = np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 0)
        out[at:at + batch_size] = np.clip(z, -b, b)  # only rounding can step past √(n−1)
    return out


NORMALISERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"minmax": normalise, "batchnorm": batch_normalise}


# --------------------------------------------------------------------------- sampling


def chacha20_bytes(n: int) -> bytearray:
    """``n`` bytes of ChaCha20 keystream under a fresh key from the OS CSPRNG (see the module notes)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # at first use: 8 MB a process may not need

    out = bytearray(n)  # zeros, encrypted in place: the keystream without a second n-byte buffer
    Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), mode=None).encryptor().update_into(out, out)
    return out


SOURCES: dict[str, Callable[[int], bytes]] = {"chacha20": chacha20_bytes, "urandom": os.urandom}
DEFAULT_SOURCE = "chacha20"


def entropy_source(source: str | Callable[[int], bytes]) -> Callable[[int], bytes]:
    """A source of random bytes by name (``SOURCES``), or the callable itself."""
    if callable(source):
        return source
    try:
        return SOURCES[source]
    except KeyError:
        raise PrivacyError(f"unknown noise source {source!r}; known: {', '.join(SOURCES)}") from None


def two_sided_geometric(shape, scale: float, *, randbytes: str | Callable[[int], bytes] = DEFAULT_SOURCE
                        ) -> np.ndarray:
    """Integers with P(K=k) = (1−α)/(1+α)·α^|k|, α = exp(−1/scale): the discrete Laplace.

    ``randbytes`` is the entropy source: a name in ``SOURCES`` or ``randbytes(n) -> bytes``.
    """
    if not (0 < scale <= MAX_SCALE):
        raise PrivacyError(f"scale must lie in (0, 2^40], got {scale}")
    read = entropy_source(randbytes)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        words = np.frombuffer(read(8 * count), "<u8").astype(np.uint64, copy=False)
        return _kernel.two_sided(words, float(scale))

    out, todo = draw(int(np.prod(shape)))
    while todo.size:  # the rare (−, 0) draws, drawn again from fresh words
        k, redo = draw(todo.size)
        out[todo] = k
        todo = todo[redo]
    return out.reshape(shape)


def grid_step(value_bound: float, noise_scale: float) -> float:
    """A power of two 2^-GRID_BITS below the smaller of the value bound and the noise scale."""
    return 2.0 ** (math.floor(math.log2(min(value_bound, noise_scale))) - GRID_BITS)


def sampler_pmf(scale: float) -> np.ndarray:
    """The exact probabilities of ``two_sided_geometric(·, scale)`` as implemented, for k = −K … K.

    G is non-increasing in the word's integer j (bits 1..63), so the number of
    words with G ≥ k is found by bisection through the kernel itself:
    P(G ≥ k) = c_k / 2^63 exactly.  (−, 0) draws are redrawn, so
    P(K = k) ∝ P(G = |k|) for every k.  K is the largest draw (≤ 44.4·scale).
    """
    if not (0 < scale <= MAX_SCALE):
        raise PrivacyError(f"scale must lie in (0, 2^40], got {scale}")
    k = np.arange(int(45 * scale) + 2)
    lo, hi = np.zeros(k.size, np.uint64), np.full(k.size, 1 << 63, np.uint64)

    def draws(j):  # sign bit clear: the kernel returns G itself
        return _kernel.two_sided(j << np.uint64(1), float(scale))[0]

    while (lo < hi).any():  # 64 rounds: c_k = #{j : G(j) ≥ k}
        mid = lo + (hi - lo) // np.uint64(2)
        ge = draws(np.minimum(mid, np.uint64((1 << 63) - 1))) >= k
        lo, hi = np.where(ge & (lo < hi), mid + np.uint64(1), lo), np.where(~ge & (lo < hi), mid, hi)
    inside = lo > 0
    if not (draws(lo[inside] - np.uint64(1)) >= k[inside]).all():
        raise AssertionError("the sampler is not monotone in its word")
    g = (lo[:-1] - lo[1:]).astype(np.float64)  # 2^63 · P(G = k)
    g = g[:np.flatnonzero(g)[-1] + 1]
    w = np.concatenate([g[:0:-1], g])
    return w / w.sum()


def sampler_delta(pmf: np.ndarray, shift: int, epsilon: float) -> float:
    """δ such that noise with probabilities ``pmf`` is (ε, δ)-DP for inputs ``shift`` grid steps apart.

    δ = Σ_o max(0, P(o) − e^ε·P(o − shift)), in both directions (the pmf is symmetric).
    """
    p = np.concatenate([pmf, np.zeros(shift)])
    q = np.concatenate([np.zeros(shift), pmf])
    return float(np.maximum(0.0, p - math.exp(epsilon) * q).sum())


class Noised:
    """Noisy values on a grid: ``values`` = ``grid`` × integers, exactly."""

    __slots__ = ("values", "grid", "scale", "sensitivity")

    def __init__(self, values: np.ndarray, grid: float, scale: float, sensitivity: float):
        self.values, self.grid, self.scale, self.sensitivity = values, grid, scale, sensitivity


class NoiseMechanism(Protocol):
    """Adds noise for ε-DP to values in [−bound, bound] of which one protected unit moves ``coordinates``."""

    name: ClassVar[str]

    def perturb(self, values: np.ndarray, *, bound: float, coordinates: int, epsilon: float) -> Noised: ...


class DiscreteLaplace:
    """The two-sided geometric on a power-of-two grid (see the module notes)."""

    name: ClassVar[str] = "discrete_laplace"

    def __init__(self, randbytes: str | Callable[[int], bytes] = DEFAULT_SOURCE):
        self.randbytes = entropy_source(randbytes)

    def perturb(self, values: np.ndarray, *, bound: float, coordinates: int, epsilon: float) -> Noised:
        check_epsilon(epsilon)
        g = grid_step(bound, coordinates * 2 * bound / epsilon)
        limit = math.ceil(bound / g)
        # L1 sensitivity in grid steps: each rounded coordinate lies in [−limit, limit]
        steps = coordinates * 2 * limit
        s = steps / epsilon
        x = np.ascontiguousarray(values, np.float64)
        k = two_sided_geometric(x.size, s, randbytes=self.randbytes)
        top = limit + 45 * s  # the largest |q + K| possible (the geometric's tail ends at 44.4 s)
        out = np.empty(x.shape, np.float32 if top < 2 ** 24 else np.float64)  # the grid stays exact in either
        _kernel.on_grid(x.reshape(-1), k, g, limit, out.reshape(-1))  # g·(clip(round(x/g)) + K)
        return Noised(out, g, s * g, steps * g)


class NoNoise:
    """No privacy (ε = ∞): the normalised values as they are. For baselines only."""

    name: ClassVar[str] = "none"

    def __init__(self, randbytes: str | Callable[[int], bytes] | None = None):
        pass  # draws nothing

    def perturb(self, values: np.ndarray, *, bound: float, coordinates: int, epsilon: float) -> Noised:
        return Noised(np.asarray(values, np.float32), 0.0, 0.0, coordinates * 2 * bound)


MECHANISMS: dict[str, type] = {DiscreteLaplace.name: DiscreteLaplace, NoNoise.name: NoNoise}


def mechanism(name: str, **options) -> NoiseMechanism:
    try:
        return MECHANISMS[name](**options)
    except KeyError:
        raise ValueError(f"unknown noise mechanism {name!r}; known: {', '.join(MECHANISMS)}") from None


def check_epsilon(epsilon: float) -> float:
    if not (0 < epsilon <= MAX_EPSILON):
        raise PrivacyError(f"ε = {epsilon} must lie in (0, {MAX_EPSILON:g}]")
    return epsilon


def coordinates(unit: str, dims: int) -> int:
    """How many coordinates one protected unit moves: one feature value, or a whole record of d."""
    if unit not in UNITS:
        raise PrivacyError(f"privacy unit {unit!r} is not one of {', '.join(UNITS)}")
    return 1 if unit == "feature" else dims


# --------------------------------------------------------------------------- accounting


@message("privacy_spend")
class PrivacySpend(Message):
    """One release of items by a device: what the ledger records.

    ``items_root`` is the RFC 6962 Merkle root over the released item ids (8-byte
    big-endian), so a later claim about any item can be checked against it.
    """

    device: Annotated[str, MaxLen(128)]
    task: Annotated[str, MaxLen(128)]
    round: Annotated[int, Range(0, (1 << 63) - 1)]
    unit: Annotated[str, MaxLen(16)]
    mechanism: Annotated[str, MaxLen(32)]
    epsilon: Annotated[float, Range(0.0, MAX_EPSILON)]
    sensitivity: float
    scale: float
    grid: float
    items: Annotated[int, Range(0, 1 << 32)]
    items_root: Annotated[bytes, MaxLen(32)]
    max_spent: float
    budget: float


def spend_id(spend: PrivacySpend) -> bytes:
    """What tells one release's spend from another: the digest of its canonical encoding."""
    return hashlib.sha256(codec.encode_message(spend)).digest()


class PrivacyRecorder(Protocol):
    """Where spending goes before data leaves the device (the ledger implements it).

    It must raise if the record could not be kept: the release is then abandoned
    and nothing is charged.
    """

    def __call__(self, spend: PrivacySpend) -> None: ...


def items_root(items: Iterable[int]) -> bytes:
    return merkle_root([int(i).to_bytes(8, "big") for i in items])


class PrivacyAccountant:
    """ε spent per data item of one device, under one budget, optionally persisted to ``path``."""

    TOLERANCE = 1e-9  # float sums of ε (0.1 + 0.2 …) must not refuse an exact fit
    SETTLED_KEPT = 1024  # a device settles one spend a round; only the one in flight can come again

    def __init__(self, budget: float, *, device: str, unit: str = "feature", path: str | os.PathLike | None = None,
                 recorder: PrivacyRecorder | None = None):
        if not (budget > 0 and math.isfinite(budget)):
            raise PrivacyError(f"budget must be positive and finite, got {budget}")
        if unit not in UNITS:
            raise PrivacyError(f"privacy unit {unit!r} is not one of {', '.join(UNITS)}")
        self.budget, self.device, self.unit = float(budget), device, unit
        self.path = Path(path) if path is not None else None
        self.recorder = recorder
        self._spent: dict[int, float] = {}
        self._settled: dict[bytes, None] = {}  # spend_id of the last SETTLED_KEPT spends charged, oldest first
        self._lock = threading.RLock()
        if self.path is not None and self.path.exists():
            self._load()

    def spent(self, item: int) -> float:
        return self._spent.get(int(item), 0.0)

    def remaining(self, item: int) -> float:
        return max(0.0, self.budget - self.spent(item))

    def admissible(self, items: Sequence[int], epsilon: float) -> np.ndarray:
        """Mask of the items that can still be released at ``epsilon``."""
        limit = self.budget * (1 + self.TOLERANCE)
        return np.array([self._spent.get(int(i), 0.0) + epsilon <= limit for i in items], bool)

    def charge(self, items: Sequence[int], epsilon: float, *, task: str, round: int, mechanism: str,
               sensitivity: float, scale: float, grid: float) -> PrivacySpend:
        """Charge ``epsilon`` to every item (all or nothing), record it, persist it; return the record."""
        with self._lock:
            return self.settle(self.quote(items, epsilon, task=task, round=round, mechanism=mechanism,
                                          sensitivity=sensitivity, scale=scale, grid=grid), items)

    def quote(self, items: Sequence[int], epsilon: float, *, task: str, round: int, mechanism: str,
              sensitivity: float, scale: float, grid: float) -> PrivacySpend:
        """The record charging ``epsilon`` to every item would make (BudgetExceeded if one cannot take it);
        nothing is charged.  ``settle`` charges it, once."""
        check_epsilon(epsilon)
        ids = [int(i) for i in items]
        if len(set(ids)) != len(ids):
            raise PrivacyError("an item appears twice in one release")
        with self._lock:
            over = [i for i, ok in zip(ids, self.admissible(ids, epsilon)) if not ok]
            if over:
                raise BudgetExceeded(over, self.budget)
            return PrivacySpend(
                device=self.device, task=task, round=round, unit=self.unit, mechanism=mechanism,
                epsilon=float(epsilon), sensitivity=float(sensitivity), scale=float(scale), grid=float(grid),
                items=len(ids), items_root=items_root(ids),
                max_spent=max((self._spent.get(i, 0.0) + epsilon for i in ids), default=0.0), budget=self.budget)

    def settle(self, spend: PrivacySpend, items: Sequence[int]) -> PrivacySpend:
        """Charge the quoted ``spend`` to ``items``: record it (with a recorder), then persist; a spend settled
        before is not charged again, so a device that crashed after settling can settle its kept release again."""
        ids = [int(i) for i in items]
        if len(ids) != spend.items or items_root(ids) != spend.items_root:
            raise PrivacyError("the items are not the ones the spend was quoted for")
        digest = spend_id(spend)
        with self._lock:
            if digest in self._settled:
                return spend
            if self.recorder is not None:
                self.recorder(spend)  # raises → nothing charged, nothing released
            self._spent.update({i: self._spent.get(i, 0.0) + spend.epsilon for i in ids})
            self._settled[digest] = None
            while len(self._settled) > self.SETTLED_KEPT:
                del self._settled[next(iter(self._settled))]
            if self.path is not None:
                self._save()
        return spend

    def _save(self) -> None:
        ids = np.array(sorted(self._spent), np.int64)
        eps = np.array([self._spent[int(i)] for i in ids], np.float64)
        write_atomic(self.path, codec.encode({"device": self.device, "unit": self.unit, "ids": ids, "spent": eps,
                                              "settled": list(self._settled)}), mode=0o600)

    def _load(self) -> None:
        try:
            state = codec.decode(self.path.read_bytes(), codec.Limits(max_size=256 << 20))
            if state["device"] != self.device or state["unit"] != self.unit:
                raise PrivacyError(f"{self.path} belongs to {state['device']}/{state['unit']}, "
                                   f"not {self.device}/{self.unit}")
            ids, eps = state["ids"], state["spent"]
            if len(ids) != len(eps):
                raise PrivacyError(f"{self.path}: ids and amounts differ in length")
            if not all(isinstance(d, bytes) for d in state.get("settled", [])):
                raise PrivacyError(f"{self.path}: settled spends are not digests")
        except (OSError, codec.CodecError, KeyError, TypeError) as exc:
            # refusing to start is the safe side: forgetting spent ε would release data past its budget
            raise PrivacyError(f"cannot read the privacy ledger {self.path}: {exc}") from None
        self._spent = {int(i): float(e) for i, e in zip(ids, eps)}
        self._settled = dict.fromkeys(bytes(d) for d in state.get("settled", []))


# --------------------------------------------------------------------------- the device's release


class Release:
    """What a device may send: the released ids, their noisy features, the spend record (None without DP)."""

    __slots__ = ("ids", "values", "grid", "spend", "withheld")

    def __init__(self, ids, values, grid, spend, withheld):
        self.ids, self.values, self.grid, self.spend, self.withheld = ids, values, grid, spend, withheld


class Privatiser:
    """Normalise, add noise and charge the accountant: the device's one call before sending features.

    Items whose budget is spent are withheld (``Release.withheld``), never sent.
    With no accountant (ε = ∞ baselines) nothing is charged.  ``normaliser``
    names how features are brought into [−B, B] (``NORMALISERS``): the
    design's per-row scaling (``"minmax"``, what devices run) or, for the
    design's comparison, Jiang et al.'s batch normalisation.
    """

    def __init__(self, noise: NoiseMechanism, *, epsilon: float, batch_size: int, unit: str = "feature",
                 accountant: PrivacyAccountant | None = None, normaliser: str = "minmax"):
        if noise.name != NoNoise.name:
            check_epsilon(epsilon)
        if accountant is not None and accountant.unit != unit:
            raise PrivacyError(f"the accountant counts {accountant.unit!r} units, the release is {unit!r}")
        if normaliser not in NORMALISERS:
            raise PrivacyError(f"unknown normaliser {normaliser!r}; known: {', '.join(NORMALISERS)}")
        self.noise, self.epsilon, self.batch_size, self.unit = noise, epsilon, batch_size, unit
        self.accountant, self.normaliser = accountant, normaliser

    def normalise(self, features: np.ndarray) -> np.ndarray:
        """Features brought into [−B, B] as a release does, without noise (test and root data)."""
        return NORMALISERS[self.normaliser](features, self.batch_size)

    def release(self, ids: Sequence[int], features: np.ndarray, *, task: str = "", round: int = 0,
                chunk_rows: int = 0, charge: bool = True) -> Release:
        """``chunk_rows`` > 0 streams the rows through normalisation and noise that many at a time: the
        float64 intermediates (about 40 bytes per value) then exist for one chunk, not for the whole release.
        Rows are independent (each is normalised alone, each value gets its own draw), so the released
        distribution is the same.  ``charge=False``: the release's ``spend`` is only quoted; the caller records
        it and settles it with the accountant before the values leave (``PrivacyAccountant.settle``)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) != len(features):
            raise PrivacyError(f"{len(ids)} ids for {len(features)} feature rows")
        keep = self.accountant.admissible(ids, self.epsilon) if self.accountant else np.ones(len(ids), bool)
        withheld = ids[~keep]
        if withheld.size:
            log.info("withholding %d item(s) whose ε budget is spent", withheld.size)
        ids, features = ids[keep], np.asarray(features)[keep] if not keep.all() else np.asarray(features)
        if features.ndim != 2:
            raise PrivacyError(f"features must be (n, d) with d ≥ 1, got shape {features.shape}")
        # chunks of whole batches: the batch normaliser normalises each run of batch_size rows together
        step = -(-chunk_rows // self.batch_size) * self.batch_size if chunk_rows > 0 else max(1, len(features))
        b, dims = bound(self.batch_size), coordinates(self.unit, features.shape[1])
        noised, out = None, None
        for start in range(0, max(1, len(features)), step):  # once even for no rows: the grid and scale
            part = self.noise.perturb(self.normalise(features[start:start + step]), bound=b,
                                      coordinates=dims, epsilon=self.epsilon)
            if out is None:
                noised = part
                out = part.values if step >= len(features) else np.empty(features.shape, part.values.dtype)
            if out is not part.values:
                out[start:start + step] = part.values
        noised.values = out
        spend = None
        if self.accountant is not None and len(ids):
            terms = dict(task=task, round=round, mechanism=self.noise.name, sensitivity=noised.sensitivity,
                         scale=noised.scale, grid=noised.grid)
            spend = (self.accountant.charge if charge else self.accountant.quote)(ids, self.epsilon, **terms)
        return Release(ids, noised.values, noised.grid, spend, withheld)
