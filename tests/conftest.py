import asyncio
import importlib
import os

import pytest

from edgefl.crypto.envelope import Signer, StaticKeyRegistry, Verifier
from edgefl.crypto.keys import SigningKey
from edgefl.runtime.config import MqttSection
from edgefl.runtime.metrics import Metrics
from edgefl.transport.mosquitto import LocalMosquitto, mosquitto_binary
from edgefl.transport.session import Session


def _required(var: str) -> bool:
    return os.environ.get(var, "") not in ("", "0")


def twin_modules(name: str) -> dict:
    """{'native': compiled module, 'pure': twin}; the native entry is absent when not built."""
    mods = {"pure": importlib.import_module(f"edgefl._pure.{name}")}
    try:
        mods["native"] = importlib.import_module(f"edgefl._ext.{name}")
    except ImportError:
        if _required("EDGEFL_REQUIRE_EXTENSIONS"):
            raise
    return mods


@pytest.fixture(params=["native", "pure"])
def impl_name(request):
    return request.param


def load_twin(name: str, which: str):
    mods = twin_modules(name)
    if which not in mods:
        pytest.skip(f"compiled edgefl._ext.{name} not built")
    return mods[which]


def need_mosquitto():
    if mosquitto_binary() is None:
        if _required("EDGEFL_REQUIRE_BROKER"):
            pytest.fail("mosquitto is required (apt-get install mosquitto)")
        pytest.skip("mosquitto not installed")


def need_tool(*names: str, package: str) -> None:
    """Debian tools some tests drive (mtools, sfdisk, cloud-init, systemd-analyze): skip without them, but
    fail when EDGEFL_REQUIRE_BROKER=1 says the machine was set up (scripts/setup.sh installs them)."""
    import shutil

    missing = [n for n in names if shutil.which(n) is None and not os.access(f"/usr/sbin/{n}", os.X_OK)]
    if missing:
        if _required("EDGEFL_REQUIRE_BROKER"):
            pytest.fail(f"{', '.join(missing)} required (apt-get install {package})")
        pytest.skip(f"{', '.join(missing)} not installed ({package})")


async def connected(*sessions, timeout: float = 10):
    await asyncio.gather(*(s.wait_connected(timeout) for s in sessions))


async def topics_seen_until(everything, suffix: str, settle: float = 0.3) -> list[str]:
    """Topics a raw ``edgefl/v1/#`` subscription saw until one ending in ``suffix``, plus what came ``settle`` s later."""
    seen = []
    while not any(t.endswith(suffix) for t in seen):
        seen.append((await everything.get(timeout=5)).topic)
    await asyncio.sleep(settle)
    while not everything.queue.empty():
        seen.append(everything.queue.get_nowait().topic)
    return seen


@pytest.fixture
def broker(tmp_path):
    need_mosquitto()
    with LocalMosquitto(tmp_path / "broker") as b:
        yield b


class Nodes:
    """Key pairs for a handful of node ids, one shared registry, sessions on demand."""

    def __init__(self, port: int, *names: str):
        self.port = port
        self.keys = {n: SigningKey() for n in names}
        self.registry = StaticKeyRegistry({n: k.public_key for n, k in self.keys.items()})
        self.metrics: dict[str, Metrics] = {}

    def session(self, name: str, role: str = "device", **mqtt) -> Session:
        cfg = MqttSection(port=self.port, reconnect_min_s=0.05, reconnect_max_s=0.5, **mqtt)
        m = self.metrics.setdefault(name, Metrics())
        return Session(site="t", role=role, signer=Signer(name, self.keys[name]), mqtt=cfg, metrics=m,
                       verifier=Verifier(self.registry, metrics=m, name=name))
