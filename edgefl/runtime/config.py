"""Configuration: a TOML firmware profile, overridden by environment, then CLI flags.

    defaults  <  firmware_profiles/<name>.toml  <  EDGEFL_<SECTION>__<KEY>=value  <  --set section.key=value

Every value is validated against the dataclass schema below; an error names
the offending key and where the value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from edgefl import resources
from edgefl.errors import EdgeflError
from edgefl.fl import AGGREGATORS, ATTACKS

_AGGREGATORS = tuple(sorted(AGGREGATORS))  # the config accepts exactly the registry's names
_ATTACKS = tuple(sorted(ATTACKS))


class ConfigError(EdgeflError, ValueError):
    reason = "config"

    def __init__(self, key: str, problem: str, source: str = ""):
        super().__init__(f"{key}: {problem}" + (f" (from {source})" if source else ""))
        self.key = key
        self.source = source


def _range(lo: float | None = None, hi: float | None = None) -> dict:
    return {"range": (lo, hi)}


@dataclass
class NodeSection:
    id: str = "node-1"
    role: Literal["device", "fog", "cloud"] = "device"
    site: str = "site-1"
    data_dir: str = "~/.local/share/edgefl"
    fog: str | None = None  # the fog a device reports to


@dataclass
class BoardSection:
    name: str = "generic"
    model: str = ""
    cpu_cores: int = field(default=4, metadata=_range(1, 256))
    ram_mb: int = field(default=1024, metadata=_range(128))
    memory_max_mb: int = field(default=0, metadata=_range(0))  # the service's MemoryMax (systemd); 0: ram_mb / 2
    # a board with little memory (Zero 2 W): glibc hands freed memory back at once instead of keeping large
    # buffers for reuse (no large-buffer tuning, two malloc arenas; edgefl.runtime.memory)
    low_memory: bool = False


@dataclass
class MqttSection:
    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=_range(1, 65535))
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = field(default=30, metadata=_range(5, 3600))
    session_expiry_s: int = field(default=3600, metadata=_range(0))
    qos: int = field(default=1, metadata=_range(0, 1))
    max_packet_size: int = field(default=1 << 20, metadata=_range(4096, 256 << 20))
    max_message_size: int = field(default=16 << 20, metadata=_range(4096))
    max_inflight: int = field(default=100, metadata=_range(1, 65535))
    outbox_limit: int = field(default=10000, metadata=_range(1))
    reassembly_buffer: int = field(default=64 << 20, metadata=_range(4096))
    chunk_timeout_s: float = field(default=30.0, metadata=_range(0.1))
    # what one sender may make this node read: messages a second on average, and in a burst (0: no limit);
    # beyond it messages are dropped before their signature is checked (inbound_rejected{rate_limited})
    rate_per_sender: float = field(default=100.0, metadata=_range(0))
    rate_burst: int = field(default=500, metadata=_range(1))
    reconnect_min_s: float = field(default=0.2, metadata=_range(0.01))
    reconnect_max_s: float = field(default=30.0, metadata=_range(0.01))
    request_timeout_s: float = field(default=10.0, metadata=_range(0.01))
    drain_timeout_s: float = field(default=10.0, metadata=_range(0))
    username: str | None = None  # defaults to the node id
    password_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass
class SecuritySection:
    key_file: str = "{data_dir}/keys/{id}.key"
    # Who may send: "directory" trusts every ID.pub in trust_dir; "pki" trusts
    # what chains to the root certificate ca_cert (certificates in cert_dir,
    # revocation lists in crl_dir, as laid out by `edgefl pki`).
    registry: Literal["directory", "pki"] = "directory"
    trust_dir: str = "{data_dir}/trust"
    ca_cert: str = "{data_dir}/pki/ca.cert"
    cert_dir: str = "{data_dir}/pki/certs"
    crl_dir: str = "{data_dir}/pki/crl"
    require_fresh_crl: bool = False  # refuse identities whose issuer's CRL is missing or past next_update
    max_clock_skew_s: float = field(default=120.0, metadata=_range(1))
    replay_window: int = field(default=1024, metadata=_range(16, 1 << 20))


@dataclass
class MlSection:
    """Feature extraction and privacy on a device; dense training at a fog (edgefl.ml)."""

    backend: Literal["onnxruntime", "litert", "tflite_runtime"] = "onnxruntime"
    threads: int = field(default=1, metadata=_range(1, 256))  # ONNX Runtime's intra-op threads, LiteRT's threads
    blas_threads: int = field(default=0, metadata=_range(0, 256))  # numpy's BLAS; 0: as the BLAS chooses
    # images through the extractor and the noise at a time: bounds a batch's scratch memory (0: all at once)
    chunk_rows: int = field(default=64, metadata=_range(0, 4096))
    model_dir: str = "{data_dir}/models"
    batch_size: int = field(default=64, metadata=_range(2, 4096))  # N: features lie in [-sqrt(N-1), sqrt(N-1)]
    noise: Literal["discrete_laplace"] = "discrete_laplace"
    noise_source: Literal["chacha20", "urandom"] = "chacha20"  # random words: edgefl.ml.privacy.SOURCES
    # ε per release of an item. A device refuses tasks asking for more; the
    # cloud asks for this much per round (with its batch_size, privacy_unit,
    # optimizer, lr and local_epochs) in the tasks it advertises.
    epsilon: float = field(default=1.0, metadata=_range(1e-3, 1000))
    epsilon_budget: float = field(default=10.0, metadata=_range(1e-3))  # per item, across rounds
    privacy_unit: Literal["feature", "record"] = "feature"
    privacy_file: str = "{data_dir}/privacy.cbor"  # the accountant's record of ε spent per item
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = field(default=0.001, metadata=_range(0, 10))
    prox_mu: float = field(default=1.0, metadata=_range(0, 1e6))  # cloud: FedProx term pulling local models to M_O
    local_epochs: int = field(default=5, metadata=_range(1, 1000))
    local_training: bool = True  # device: takes part in tasks that train on-device (fl.train_at = "device")
    # cloud: the aggregators its tasks name (edgefl.fl.aggregate): each fog's over its devices, the
    # cloud's over the fogs; options as key=value, e.g. ["f=1"], ["max_norm=5.0", "inner=krum", "f=1"]
    aggregator: Literal[_AGGREGATORS] = "fedavg"
    aggregator_options: list[str] = field(default_factory=list)
    cloud_aggregator: Literal[_AGGREGATORS] = "fedavg"
    cloud_aggregator_options: list[str] = field(default_factory=list)


@dataclass
class LedgerSection:
    chain: str = ""  # this node's chain id; empty: the main chain's id on the cloud, the node id on a fog
    main: str = "main"  # the main chain's id
    main_node: str = "cloud-1"  # the node serving the main chain
    servers: list[str] = field(default_factory=list)  # "chain=node" where a chain's server is not named like it
    db: str = "{data_dir}/ledger/{chain}.db"
    blob_dir: str = "{data_dir}/blobs"
    max_block_bytes: int = field(default=1 << 20, metadata=_range(4096, 64 << 20))
    # a block every this often (or at once when the mempool fills one); a PBFT leader proposes at most this
    # often (at most a quarter of view_timeout_s): under load fewer, larger blocks, each costing ~5n messages
    block_interval_s: float = field(default=1.0, metadata=_range(0.01))
    anchor_interval_s: float = field(default=10.0, metadata=_range(0.01))  # fog: Type-II up to the main chain
    beacon_interval_s: float = field(default=10.0, metadata=_range(0.01))  # cloud: Type-III out to sub-chains
    max_blob_bytes: int = field(default=16 << 20, metadata=_range(1024, 1 << 30))
    gc_grace_s: float = field(default=3600.0, metadata=_range(0))
    # fog, at genesis: its sub-chain's PBFT committee is itself and up to this many minus one of its devices
    # (edgefl.consensus.committees; fewer than 4 members in all: the fog seals alone)
    committee_size: int = field(default=7, metadata=_range(1, 64))
    # fog, at genesis: with a pool larger than this many seats, every ``epoch_blocks`` blocks (0: never) the
    # committee is re-drawn from the pool by VRF sortition (edgefl.consensus.epoch); the fog keeps its seat
    epoch_blocks: int = field(default=0, metadata=_range(0, 1 << 20))
    epoch_seats: int = field(default=4, metadata=_range(4, 64))
    view_timeout_s: float = field(default=2.0, metadata=_range(0.05))  # a committee replica: its leader's deadline
    votelog: str = "{data_dir}/ledger/{chain}.votes"  # a committee replica: what it signed, kept before it is sent


@dataclass
class FlSection:
    """Federated rounds over the network (edgefl.fl.protocol, edgefl.nodes)."""

    task: str = "digits"  # cloud: the task it advertises
    rounds: int = field(default=2, metadata=_range(1, 10000))  # cloud
    # cloud: the dense widths between the 3,920 features and the 10 classes. Every training step is
    # recorded with its state as a blob (≤ ledger.max_blob_bytes): 3920-600-100-30-20-10 would
    # store 28 MiB per step with Adam, 3920-100-30-20-10 stores 4.5 MiB.
    hidden: list[int] = field(default_factory=lambda: [100, 30, 20], metadata=_range(1, 1 << 16))
    seed: int = field(default=0, metadata=_range(0))  # cloud: initial weights and every device's batch order
    # cloud: in round 1 each fog embeds a ridge classifier fitted to its devices' features in the model
    # before training it (docs/ml.md); needs every hidden layer at least 20 wide.
    warm_start: bool = True
    # cloud: each fog trains on the mean of every release of an item so far (each release costs ε)
    average_releases: bool = True
    weights: str = ""  # cloud: extractor weights (.npz); empty: a seeded random initialisation
    # Device: its local data set; cloud: held-out data for the input transform and
    # the test accuracy. "generated" (seven-segment digits seeded by the node id),
    # an .npz (images, labels) or a folder of MNIST IDX files.
    data: str = "generated"
    items: int = field(default=200, metadata=_range(1, 1024))  # how many items of it; one batch holds ≤ 1024
    devices: list[str] = field(default_factory=list)  # fog: the devices whose batches each round waits for
    # fog, cloud: the deadline for the devices' batches (the fogs' updates); then the round goes on without
    # the stragglers once a quorum (this fraction of fl.devices; of the registered fogs) is there
    round_timeout_s: float = field(default=60.0, metadata=_range(0.1))
    quorum: float = field(default=0.5, metadata=_range(0.0, 1.0))
    # fog: train only this many of the devices whose batches came, drawn with probability growing with
    # their reputation on its chain (edgefl.fl.selection; recorded); 0: every one
    participants: int = field(default=0, metadata=_range(0, 1024))
    reward: int = field(default=1000, metadata=_range(0, 1 << 40))  # cloud: coins its tasks pay out per round
    # cloud: who trains the dense layers — each fog, one copy per device on the devices' releases, or each
    # device on its own release, sending its update clipped to clip_norm (edgefl.fl.ondevice; 0: unclipped).
    # A warm start is fitted to all of a fog's batches: fog only.
    train_at: Literal["fog", "device"] = "fog"
    clip_norm: float = field(default=0.0, metadata=_range(0.0, 1e6))
    # cloud: who aggregates the fogs' models each round — the cloud, or a fog drawn by VRF sortition from the
    # epoch seed, weighted by reputation, its aggregation checked by the cloud (edgefl.fl.leader)
    leader: Literal["cloud", "drawn"] = "cloud"
    # fog: on-device updates are audited after each round, this many random steps of each replayed
    audit_steps: int = field(default=1, metadata=_range(0, 1 << 20))
    state_file: str = "{data_dir}/fl/state.cbor"  # device, fog: what a restart must not lose
    # Experiments and the demo only (edgefl.fl.attacks; "none" unless set): a device applies a data
    # attack to its own images before extraction, a fog an update attack to the aggregate it sends up
    # (a byzantine fog); options as key=value. `edgefl demo --attack --malicious` picks who.
    attack: Literal[_ATTACKS] = "none"
    attack_options: list[str] = field(default_factory=list)


@dataclass
class MetricsSection:
    """The counters (edgefl.runtime.metrics) in the Prometheus text format over HTTP: GET /metrics."""

    port: int = field(default=0, metadata=_range(0, 65535))  # 0: off (devices); the fog and cloud profiles set one
    bind: str = "127.0.0.1"


@dataclass
class LogSection:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json: bool = False


@dataclass
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    board: BoardSection = field(default_factory=BoardSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    ml: MlSection = field(default_factory=MlSection)
    ledger: LedgerSection = field(default_factory=LedgerSection)
    fl: FlSection = field(default_factory=FlSection)
    log: LogSection = field(default_factory=LogSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    profile: str = ""  # where the profile came from (set by the loader)
    # what else it was loaded from, so that a node can load it again (SIGHUP: reload_config)
    overrides: list[str] = field(default_factory=list, repr=False)
    env: dict[str, str] | None = field(default=None, repr=False)

    def path(self, template: str) -> Path:
        """Expand ``{data_dir}``/``{id}`` placeholders and ``~`` in a configured path."""
        data_dir = os.path.expanduser(self.node.data_dir)
        return Path(os.path.expanduser(template.format(data_dir=data_dir, id=self.node.id)))


def profile_path(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    candidate = resources.folder("firmware_profiles") / f"{name_or_path}.toml"
    if not candidate.exists():
        known = sorted(q.stem for q in candidate.parent.glob("*.toml"))
        raise ConfigError("profile", f"no firmware profile {str(name_or_path)!r}; known: {', '.join(known)}")
    return candidate


_NOT_SECTIONS = ("profile", "overrides", "env")


def reload_config(cfg: Config) -> Config:
    """``cfg`` loaded again from the same profile, environment and ``--set`` overrides (what changed on disk)."""
    return load_config(cfg.profile or None, env=cfg.env, overrides=cfg.overrides)


def load_config(profile: str | os.PathLike | None = None, *, env: dict[str, str] | None = None,
                overrides: typing.Iterable[str] = ()) -> Config:
    overrides = list(overrides)
    cfg = Config(overrides=overrides, env=None if env is None else dict(env))
    if profile:
        path = profile_path(profile)
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise ConfigError("profile", f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("profile", f"{path} is not UTF-8 text (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("profile", f"{path} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(section, "expected a [section] table", str(path))
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value, str(path))
        cfg.profile = str(path)
    env = os.environ if env is None else env
    for name, raw in sorted(env.items()):
        if name.startswith("EDGEFL_") and "__" in name:
            section, _, key = name[len("EDGEFL_"):].lower().partition("__")
            _set(cfg, f"{section}.{key}", _parse_scalar(raw), name)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(item, "expected section.key=value", "--set")
        _set(cfg, key.strip(), _parse_scalar(raw.strip()), "--set")
    return cfg


def _parse_scalar(raw: str) -> Any:
    """Environment and CLI values are TOML scalars; anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _set(cfg: Config, dotted: str, value: Any, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    sections = [f.name for f in dataclasses.fields(cfg) if f.name not in _NOT_SECTIONS]
    if section_name not in sections or not key:
        raise ConfigError(dotted, "unknown section" + _suggest(section_name, sections), source)
    section = getattr(cfg, section_name)
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ConfigError(dotted, "unknown key" + _suggest(key, fields), source)
    hints = typing.get_type_hints(type(section))
    setattr(section, key, _coerce(dotted, hints[key], fields[key], value, source))


def _coerce(key: str, tp: Any, f: dataclasses.Field, value: Any, source: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
        origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        text = str(value)
        if text not in choices:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(map(repr, choices))}", source)
        return text
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}", source)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}", source)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}", source)
        value = float(value)
        if not math.isfinite(value):  # nan compares false with every bound; inf passes a bare lower one
            raise ConfigError(key, f"{value!r} is not a finite number", source)
    elif tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(key, f"expected a string, got {value!r}", source)
        value = str(value)
    elif origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}", source)
        return [_coerce(f"{key}[{i}]", item, f, v, source) for i, v in enumerate(value)]
    else:
        raise TypeError(f"{key}: unsupported config type {tp!r}")
    lo, hi = f.metadata.get("range", (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(key, f"{value!r} is outside {bounds}", source)
    return value
