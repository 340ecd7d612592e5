"""The fog's dense-layer trainer: numpy, float32, bit-for-bit deterministic.

The dense part of the model (3920 → 600 → 100 → 30 → 20 → 10, ReLU between,
softmax cross-entropy at the end) is trained on the perturbed features devices
send.  Every step is a pure function of its inputs::

    M_{i+1} = T(M_i, M_O, d_{i+1})        train_step(state, origin, x, y, config)

``state`` (M_i) holds the parameters, the optimiser's slots and the step
count; ``origin`` (M_O) is the model the round started from (the aggregated
model; it enters the update through the FedProx term ``prox_mu``, 0 by
default, and is otherwise only recorded); ``x, y`` (d_{i+1}) is the batch.
``batch_indices`` derives which rows of a device's features form step i's
batch from a seed, so a recorded (seed, step) pins the batch as well.

Determinism: all arithmetic is float32 in a fixed order; matrix products run
with the BLAS on one thread (``blas.single_threaded``); sums over the batch
are numpy reductions along axis 0 of C-contiguous arrays (row after row).  The
same inputs therefore give the same bytes on the same platform
(``blas.fingerprint()``), which is what an auditor replaying a recorded step
relies on: ``replay_step`` takes and returns canonical bytes.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Annotated, Sequence

import numpy as np

from edgefl import codec
from edgefl.codec import Array, MaxLen, Message, Range, message
from edgefl.crypto import tagged_hash
from edgefl.errors import EdgeflError
from edgefl.ml import blas

LAYERS = (3920, 600, 100, 30, 20, 10)
OPTIMIZERS = ("sgd", "adam")
INPUT_NORM = 10.0  # mean L2 norm of a centred input vector, about that of a raw MNIST image
WARM_RIDGE = 1e-2  # the warm start's ridge penalty, relative to the inputs' mean variance per coordinate
WARM_TEMPERATURE = 10.0  # the warm start's logits are its ridge outputs (about 0…1) times this
STATE_TAG = b"edgefl/train-state/v1"
BATCH_TAG = b"edgefl/train-batch/v1"
MODEL_TAG = b"edgefl/dense-model/v1"
_MAX_PARAMS = 64 << 20  # bytes of a serialised state: 4 copies of the 9.7 MB dense model fit

ParamArray = Annotated[np.ndarray, Array("float32", max_elems=1 << 24)]


class TrainError(EdgeflError, ValueError):
    reason = "train"

    """Inputs to a training step do not fit the model or the configuration."""


@message("train_config")
class TrainConfig(Message):
    """Hyperparameters of a training task; recorded with it, so a replay uses the same ones."""

    layers: Annotated[list[int], MaxLen(16)] = field(default_factory=lambda: list(LAYERS))
    optimizer: Annotated[str, MaxLen(16)] = "sgd"
    lr: Annotated[float, Range(0.0, 10.0)] = 0.01
    batch_size: Annotated[int, Range(1, 1 << 16)] = 64
    beta1: Annotated[float, Range(0.0, 1.0)] = 0.9
    beta2: Annotated[float, Range(0.0, 1.0)] = 0.999
    adam_eps: Annotated[float, Range(0.0, 1.0)] = 1e-8
    prox_mu: Annotated[float, Range(0.0, 1e6)] = 0.0
    seed: Annotated[int, Range(0, (1 << 63) - 1)] = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise codec.SchemaError(f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}",
                                    field="train_config.optimizer")
        if len(self.layers) < 2 or any(n < 1 for n in self.layers):
            raise codec.SchemaError(f"{self.layers} must list at least two positive widths", field="train_config.layers")

    def to_bytes(self) -> bytes:
        return codec.encode_message(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TrainConfig":
        return cls.from_wire(codec.decode(data, canonical=True))


@message("dense_model", max_size=_MAX_PARAMS)
class DenseModel(Message):
    """Weights (in, out) and biases (out,) of every dense layer, in order.

    The features enter the first layer as ``(x − input_shift) · input_scale``.
    Normalised features sit far from zero (a ReLU feature that is 0 maps to
    −√(N−1)) and, noised, have norms in the hundreds; the first layer's
    effective learning rate grows with the square of the input norm, and a
    shared offset makes every weight move together, so SGD and Adam diverge
    or kill the ReLUs.  ``with_input_transform`` sets both from the (noisy)
    training features at the fog — post-processing, so free of privacy cost.
    """

    layers: Annotated[list[int], MaxLen(16)]
    params: Annotated[list[ParamArray], MaxLen(32)]
    input_scale: Annotated[float, Range(0.0, 1e6)] = 1.0
    input_shift: Annotated[np.ndarray, Array("float32", 1, 1 << 20)] | None = None

    def __post_init__(self):
        _check_shapes(self.layers, self.params, "dense_model")
        if self.input_shift is not None and self.input_shift.shape != (self.layers[0],):
            raise TrainError(f"dense_model: input_shift has shape {self.input_shift.shape}, expected ({self.layers[0]},)")

    def to_bytes(self) -> bytes:
        return codec.encode_message(self)

    def with_params(self, params: Sequence[np.ndarray]) -> "DenseModel":
        return DenseModel(layers=list(self.layers), params=list(params), input_scale=self.input_scale,
                          input_shift=self.input_shift)

    def with_input_transform(self, x: np.ndarray, norm: float = INPUT_NORM) -> "DenseModel":
        """Centre on the features' mean and scale their mean norm to ``norm`` (computed in float64)."""
        x64 = np.asarray(x, np.float64)
        shift = x64.mean(axis=0)
        rms = math.sqrt(float(((x64 - shift) ** 2).sum(axis=1).mean()))
        scale = norm / rms if rms > 0 else 1.0
        return DenseModel(layers=list(self.layers), params=list(self.params),
                          input_scale=float(np.float32(scale)), input_shift=shift.astype(np.float32))

    def with_warm_start(self, x: np.ndarray, y: np.ndarray, *, ridge: float = WARM_RIDGE,
                        temperature: float = WARM_TEMPERATURE) -> "DenseModel":
        """Embed a ridge-regression classifier fitted to (x, y) in the layers, so training starts from it.

        The fog's linear warm start, like the input transform post-processing
        of the released features and labels.  In the transformed inputs t,
        W = (tᵀt + λI)⁻¹ tᵀ(Y − Ȳ) regresses the one-hot labels Y, with
        λ = ``ridge`` × trace(tᵀt)/d (on noisy features the trace, hence λ,
        grows with the noise).  The first layer's units 0 … 2C−1 compute
        ±t·W (each column rescaled to the He norm √2), the hidden layers pass
        them on through identity blocks (ReLU(z) − ReLU(−z) = z), and the last
        layer turns them back into ``temperature`` × (tW + Ȳ): the model
        starts as exactly that linear classifier, its other units keep their
        random weights (cut off from the path and, at first, from the
        logits), and training refines it.  Needs every hidden layer at least 2C wide.
        With fewer items than inputs W is solved in its dual form (same W, less work).
        """
        t = (np.asarray(x, np.float64) - (0.0 if self.input_shift is None else self.input_shift)) * self.input_scale
        y = np.asarray(y)
        c = self.layers[-1]
        if len(t) != len(y) or t.ndim != 2 or t.shape[1] != self.layers[0] or not len(y):
            raise TrainError(f"warm start: {t.shape} features for {len(y)} labels, expected (n, {self.layers[0]})")
        if not warm_start_fits(self.layers):
            raise TrainError(f"warm start: hidden layers {self.layers[1:-1]} must be at least {2 * c} wide")
        onehot = np.eye(c)[y]
        mean = onehot.mean(axis=0)
        t -= t.mean(axis=0)  # the transform centred on the same data: this only removes rounding
        n, d = t.shape
        with blas.single_threaded():
            if n >= d:
                gram = t.T @ t
                lam = ridge * np.trace(gram) / d
                w = np.linalg.solve(gram + lam * np.eye(d), t.T @ (onehot - mean))
            else:  # the same W in its dual form, tᵀ(ttᵀ + λI)⁻¹(Y − Ȳ): n²d instead of d³ (a fog with few items)
                kernel = t @ t.T
                lam = ridge * np.trace(kernel) / d
                w = t.T @ np.linalg.solve(kernel + lam * np.eye(n), onehot - mean)
        norms = np.linalg.norm(w, axis=0)
        gain = np.sqrt(2.0) / np.where(norms > 0, norms, 1.0)
        params = [np.array(p, np.float64) for p in self.params]
        path = slice(0, 2 * c)
        if len(params) == 2:
            params = [w * temperature, mean * temperature]
        else:
            params[0][:, path] = np.concatenate([w * gain, -w * gain], axis=1)
            params[1][path] = 0.0
            for i in range(2, len(params) - 2, 2):
                params[i][:, path] = params[i][path, :] = 0.0
                params[i][path, path] = np.eye(2 * c)
                params[i + 1][path] = 0.0
            params[-2][:] = 0.0
            params[-2][path] = np.concatenate([np.diag(temperature / gain), -np.diag(temperature / gain)])
            params[-1][:] = mean * temperature
        return self.with_params([p.astype(np.float32) for p in params])

    @classmethod
    def from_bytes(cls, data: bytes) -> "DenseModel":
        return cls.from_wire(codec.decode(data, codec.DEFAULT_LIMITS.scaled(_MAX_PARAMS), canonical=True))

    def digest(self) -> bytes:
        return tagged_hash(MODEL_TAG, self.to_bytes())


def warm_start_fits(layers: Sequence[int]) -> bool:
    """Whether ``DenseModel.with_warm_start`` can embed its classifier: it carries ±(each class's logit),
    2C values, through every hidden layer."""
    return all(width >= 2 * layers[-1] for width in layers[1:-1])


@message("train_state", max_size=_MAX_PARAMS)
class TrainState(Message):
    """M_i: parameters, optimiser slots (Adam: first then second moments; SGD: none), steps taken."""

    step: Annotated[int, Range(0, (1 << 63) - 1)]
    model: DenseModel
    slots: Annotated[list[ParamArray], MaxLen(64)] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return codec.encode_message(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TrainState":
        return cls.from_wire(codec.decode(data, codec.DEFAULT_LIMITS.scaled(_MAX_PARAMS), canonical=True))

    def digest(self) -> bytes:
        return tagged_hash(STATE_TAG, self.to_bytes())


def _check_shapes(layers: Sequence[int], params: Sequence[np.ndarray], where: str) -> None:
    if len(layers) < 2 or any(n < 1 for n in layers):
        raise TrainError(f"{where}: layers {list(layers)} must list at least two positive widths")
    if len(params) != 2 * (len(layers) - 1):
        raise TrainError(f"{where}: {len(params)} arrays for {len(layers) - 1} layers (expected weights and biases)")
    for i, (n_in, n_out) in enumerate(zip(layers, layers[1:])):
        w, b = params[2 * i], params[2 * i + 1]
        if w.shape != (n_in, n_out) or b.shape != (n_out,):
            raise TrainError(f"{where}: layer {i} has shapes {w.shape}, {b.shape}; expected ({n_in}, {n_out}), ({n_out},)")
        if w.dtype != np.float32 or b.dtype != np.float32:
            raise TrainError(f"{where}: layer {i} is {w.dtype}/{b.dtype}, expected float32")


def init_model(layers: Sequence[int] = LAYERS, seed: int = 0, input_scale: float = 1.0) -> DenseModel:
    """He-normal weights and zero biases from a seeded PCG64 (the same on every platform)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    params = []
    for n_in, n_out in zip(layers, layers[1:]):
        w = rng.standard_normal((n_in, n_out), dtype=np.float64) * math.sqrt(2.0 / n_in)
        params += [w.astype(np.float32), np.zeros(n_out, np.float32)]
    return DenseModel(layers=list(layers), params=params, input_scale=float(np.float32(input_scale)))


def init_state(model: DenseModel, config: TrainConfig) -> TrainState:
    slots = [np.zeros_like(p) for p in model.params] * 2 if config.optimizer == "adam" else []
    return TrainState(step=0, model=model, slots=[s.copy() for s in slots])


# --------------------------------------------------------------------------- the step


def forward(params: Sequence[np.ndarray], x: np.ndarray, input_scale: float = 1.0,
            input_shift: np.ndarray | None = None) -> list[np.ndarray]:
    """Activations of every layer (the first is the transformed input); the last entry holds the logits."""
    if input_shift is not None:
        x = x - input_shift
    acts = [x * x.dtype.type(input_scale) if input_scale != 1.0 else x]
    n = len(params) // 2
    for i in range(n):
        z = acts[-1] @ params[2 * i]
        z += params[2 * i + 1]
        if i < n - 1:
            np.maximum(z, 0, out=z)
        acts.append(z)
    return acts


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    e /= e.sum(axis=1, keepdims=True)
    return e


def loss_and_grads(params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, input_scale: float = 1.0,
                   input_shift: np.ndarray | None = None) -> tuple[float, list[np.ndarray]]:
    """Mean softmax cross-entropy over the batch and its gradients, layer by layer."""
    acts = forward(params, x, input_scale, input_shift)
    probs = _softmax(acts[-1])
    batch = x.shape[0]
    rows = np.arange(batch)
    loss = float(-np.log(np.maximum(probs[rows, y], np.float32(1e-30))).astype(np.float64).mean())
    dz = probs
    dz[rows, y] -= np.float32(1.0)
    dz *= np.float32(1.0 / batch)
    grads: list[np.ndarray] = [None] * len(params)  # type: ignore[list-item]
    for i in range(len(params) // 2 - 1, -1, -1):
        a = acts[i]
        grads[2 * i] = a.T @ dz
        grads[2 * i + 1] = dz.sum(axis=0)
        if i:
            dz = dz @ params[2 * i].T
            dz *= acts[i] > 0
    return loss, grads


def _check_batch(model: DenseModel, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y)
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != model.layers[0]:
        raise TrainError(f"features must be float32 (batch, {model.layers[0]}), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise TrainError(f"labels must be integers (batch,) matching {x.shape[0]} rows, got {y.dtype} {y.shape}")
    if x.shape[0] == 0:
        raise TrainError("empty batch")
    if y.min() < 0 or y.max() >= model.layers[-1]:
        raise TrainError(f"labels must lie in [0, {model.layers[-1]})")
    if not np.isfinite(x).all():
        raise TrainError("features contain NaN or infinity")
    return x, y.astype(np.int64)


def train_step(state: TrainState, origin: DenseModel | None, x: np.ndarray, y: np.ndarray,
               config: TrainConfig) -> TrainState:
    """One optimiser step on batch (x, y): M_{i+1} = T(M_i, M_O, d_{i+1}). Inputs are not modified."""
    model = state.model
    x, y = _check_batch(model, x, y)
    if origin is not None and origin.layers != model.layers:
        raise TrainError(f"origin model layers {origin.layers} differ from {model.layers}")
    params = model.params
    with blas.single_threaded():
        loss, grads = loss_and_grads(params, x, y, model.input_scale, model.input_shift)
        if config.prox_mu and origin is not None:
            mu = np.float32(config.prox_mu)
            grads = [g + mu * (p - o) for g, p, o in zip(grads, params, origin.params)]
        step = state.step + 1
        lr = np.float32(config.lr)
        if config.optimizer == "sgd":
            new_params = [p - lr * g for p, g in zip(params, grads)]
            slots: list[np.ndarray] = []
        else:
            if len(state.slots) != 2 * len(params):
                raise TrainError(f"adam needs {2 * len(params)} slots, the state has {len(state.slots)}")
            b1, b2 = np.float32(config.beta1), np.float32(config.beta2)
            # bias corrections in float64, rounded once to float32: the same on every platform
            c1 = np.float32(1.0 - config.beta1 ** step)
            c2 = np.float32(1.0 - config.beta2 ** step)
            eps = np.float32(config.adam_eps)
            m_old, v_old = state.slots[:len(params)], state.slots[len(params):]
            m = [b1 * mo + (np.float32(1) - b1) * g for mo, g in zip(m_old, grads)]
            v = [b2 * vo + (np.float32(1) - b2) * (g * g) for vo, g in zip(v_old, grads)]
            new_params = [p - lr * (mi / c1) / (np.sqrt(vi / c2) + eps) for p, mi, vi in zip(params, m, v)]
            slots = m + v
    new_params = [np.ascontiguousarray(p, dtype=np.float32) for p in new_params]
    slots = [np.ascontiguousarray(s, dtype=np.float32) for s in slots]
    return TrainState(step=step, model=model.with_params(new_params), slots=slots)


def replay_step(state: bytes, origin: bytes | None, x: np.ndarray, y: np.ndarray, config: bytes | TrainConfig) -> bytes:
    """The auditor's call: recorded bytes in, the next state's canonical bytes out."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_bytes(config)
    before = TrainState.from_bytes(state)
    base = DenseModel.from_bytes(origin) if origin is not None else None
    return train_step(before, base, x, y, cfg).to_bytes()


def batch_digest(x: np.ndarray, y: np.ndarray) -> bytes:
    """Hash of a training batch as recorded: canonical CBOR of {x: float32, y: int64}."""
    return tagged_hash(BATCH_TAG, codec.encode({"x": np.ascontiguousarray(x, np.float32),
                                                "y": np.ascontiguousarray(y, np.int64)}))


def batch_indices(n_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of a device's data forming training step ``step`` (0-based).

    Each epoch is a PCG64 permutation seeded by (seed, epoch); an epoch has
    ceil(n / batch_size) steps and the last batch may be short.
    """
    if n_items < 1 or batch_size < 1 or step < 0:
        raise TrainError("n_items and batch_size must be positive and step non-negative")
    per_epoch = -(-n_items // batch_size)
    epoch, j = divmod(step, per_epoch)
    order = np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n_items)
    return order[j * batch_size:(j + 1) * batch_size]


def predict(model: DenseModel, x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Class predictions for feature rows (not recorded, so BLAS threading is left alone)."""
    out = [forward(model.params, np.ascontiguousarray(x[i:i + chunk], np.float32), model.input_scale,
                   model.input_shift)[-1].argmax(axis=1)
           for i in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(model: DenseModel, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


class ReleaseMean:
    """The fog's running mean of each item's released features, across rounds.

    Every round a device releases its items with fresh noise, each release
    charged ε again (sequential composition); the mean of k releases has 1/k
    of the noise variance, and taking it is post-processing: no further
    privacy cost.
    """

    def __init__(self):
        self._rows: dict[int, int] = {}
        self._sums = np.zeros((0, 0), np.float64)
        self._counts = np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Take in one release; return the mean of every release so far of these items (float32)."""
        values = np.asarray(values, np.float64)
        new = [int(i) for i in ids if int(i) not in self._rows]
        if new:
            first = len(self._rows)
            self._rows.update((i, first + j) for j, i in enumerate(new))
            width = values.shape[1] if self._sums.size == 0 else self._sums.shape[1]
            self._sums = np.concatenate([self._sums.reshape(-1, width), np.zeros((len(new), width))])
            self._counts = np.concatenate([self._counts, np.zeros(len(new), np.int64)])
        rows = np.array([self._rows[int(i)] for i in ids], np.int64)
        self._sums[rows] += values  # exact: released values are float32 on a power-of-two grid
        self._counts[rows] += 1
        return (self._sums[rows] / self._counts[rows, None]).astype(np.float32)


class Trainer:
    """Local training of one device's model at the fog: epochs of seeded mini-batch steps.

    ``on_step(step, state, batch_rows)`` sees every step as it is taken (the
    ledger records them there).
    """

    def __init__(self, config: TrainConfig, on_step=None):
        self.config = config
        self.on_step = on_step

    def fit(self, model: DenseModel, x: np.ndarray, y: np.ndarray, *, epochs: int = 1,
            state: TrainState | None = None) -> TrainState:
        state = state or init_state(model, self.config)
        origin = model
        per_epoch = -(-len(x) // self.config.batch_size)
        for _ in range(epochs * per_epoch):
            rows = batch_indices(len(x), self.config.batch_size, self.config.seed, state.step)
            state = train_step(state, origin, x[rows], y[rows], self.config)
            if self.on_step is not None:
                self.on_step(state.step, state, rows)
        return state
