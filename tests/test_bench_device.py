"""`edgefl bench device`: the device agent in its own process against Mosquitto and a fog, quick form."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefl.bench import published, suite
from tests.conftest import need_mosquitto

REPO = Path(__file__).resolve().parents[1]
ROWS = {f"device_{what}_{backend}" for what in ("rss_mb", "peak_rss_mb", "cpu_per_batch")
        for backend in ("litert", "onnxruntime")} | {"device_start_s", "device_rss_mb_litert_replica"}


@pytest.mark.timeout(300)
@pytest.mark.skipif(os.environ.get("EDGEFL_NO_EXTENSIONS") == "1",
                    reason="the benchmark runs once, in the pass with the compiled extensions")
def test_quick_run_under_a_board_profile_writes_every_row(tmp_path):
    need_mosquitto()
    out = tmp_path / "device.json"
    run = subprocess.run([sys.executable, "-m", "edgefl", "--log-level", "WARNING", "bench", "device", "--quick",
                          "--profile", "pizero2w", "--restarts", "0", "--json", str(out)],
                         capture_output=True, text=True, timeout=240, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(rows) == ROWS
    for r in rows.values():  # what `bench all` keeps of a layer's rows
        for key, tp in suite.SCHEMA["row"].items():
            assert isinstance(r[key], tp), (r["name"], key)
        assert math.isfinite(r["median"]) and 0 < r["median"] <= r["p99"], r
    for backend in ("litert", "onnxruntime"):
        steady, peak = rows[f"device_rss_mb_{backend}"], rows[f"device_peak_rss_mb_{backend}"]
        assert rows[f"device_rss_mb_{backend}"]["unit"] == "MB" and steady["p99"] <= peak["median"]
        assert steady["goal"] == f"<= {80 if backend == 'litert' else 120} MB"
        assert "1 core" in steady["note"]  # the profile's caps were applied
        assert rows[f"device_cpu_per_batch_{backend}"]["unit"] == "ms"
    assert rows["device_start_s"]["unit"] == "s" and rows["device_start_s"]["goal"] == "<= 1.5 s"
    replica = rows["device_rss_mb_litert_replica"]  # the same device as a committee member, beside it
    assert replica["replica_height"] > 0 and "committee of 4" in replica["note"]
    assert replica["ratio"] == pytest.approx(replica["median"] / rows["device_rss_mb_litert"]["median"])
    # the published table reads the device rows
    table = {e["row"]: e for e in published.table({"device": list(rows.values())}) if e["row"]}
    assert {"device.device_rss_mb_litert", "device.device_rss_mb_onnxruntime", "device.device_start_s"} <= set(table)
    assert all(e["measured"] is not None and e["met"] is not None for e in table.values())


def test_bench_all_hands_the_device_layer_its_profile():
    caps = suite.board_caps("pizero2w")
    accepted = suite._accepted_options()["device"]
    args = suite._layer_options("device", True, caps, accepted)
    assert args[:1] == ["--quick"] and args[args.index("--profile") + 1] == "pizero2w"
