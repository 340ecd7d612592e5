"""`edgefl bench scale`: the growth exponent, the rows and goals from measured points, and a tiny real run."""

import json
import math

import pytest

from edgefl.bench import scale, suite
from edgefl.bench.published import goal_met
from tests.conftest import need_mosquitto


def test_growth_exponent_is_the_slope_of_log_y_on_log_n():
    ns = [10, 50, 100, 1000]
    assert scale.growth_exponent(ns, [3 * n ** 1.5 for n in ns]) == pytest.approx(1.5)
    assert scale.growth_exponent(ns, [7.0] * 4) == pytest.approx(0.0)
    assert scale.growth_exponent(ns, [2.0 / n for n in ns]) == pytest.approx(-1.0)
    # a missing or zero figure is left out; one point has no slope
    assert scale.growth_exponent(ns, [None, 50.0, 0.0, 1000.0]) == pytest.approx(1.0)
    assert scale.growth_exponent([10], [5.0]) is None


def _point(n, per_device_ms, rss_mb, deliveries_per_device, completed=2):
    figures = {key: None for key in scale.FIGURES}
    figures.update(round_s=per_device_ms * n / 1e3, round_per_device_ms=per_device_ms, fog_rss_mb=rss_mb,
                   deliveries_per_device=deliveries_per_device, verify_ms_per_block=0.5 + n / 1000)
    return {"devices": n, "rounds_asked": 2, "rounds_completed": completed, "rounds": [], "figures": figures,
            "counts": {"reconnects": 0, "stale": 1 if n == 1000 else 0, "request_timeouts": 0}}


def test_rows_goals_and_exponents_of_measured_points():
    points = [_point(100, 200.0, 300.0, 8.0), _point(1000, 260.0, 1500.0, 9.5, completed=1)]
    rows = {r.name: r for r in scale.report_of(points, head=[3920, 20, 10]).rows}
    assert rows["scale_round_s_exponent"].median == pytest.approx(1 + math.log10(260 / 200))
    ratio = rows["scale_round_per_device_ratio_1000_100"]
    assert ratio.median == pytest.approx(1.3) and ratio.goal == "<= 1.2" and not goal_met(ratio.goal, 1.3, "ratio")
    per_device = rows["scale_fog_rss_mb_per_device"]
    assert per_device.median == pytest.approx(1200 / 900) and goal_met(per_device.goal, per_device.median, "MB")
    assert goal_met(rows["scale_deliveries_per_device_max_n1000"].goal, 9.5, "msgs")
    assert not goal_met(rows["scale_stale_n1000"].goal, rows["scale_stale_n1000"].median, "count")
    assert not goal_met(rows["scale_rounds_completed_n1000"].goal, 1, "rounds")
    assert rows["scale_verify_ms_per_block_n1000"].goal == "<= 1 ms"
    assert math.isnan(rows["scale_warm_start_s_n100"].median)  # not measured: NaN, null in the JSON
    table = scale.wide_table([r.to_json() for r in rows.values()])
    assert "| 100 devices | 1000 devices | growth exponent |" in table.splitlines()[0]


@pytest.mark.broker
async def test_a_tiny_run_measures_every_figure(tmp_path):
    """Two devices in one process, the fog and the cloud in theirs, a real Mosquitto: two rounds measured."""
    need_mosquitto()
    report = await scale.run(devices=[2], rounds=2, per_process=2, fast=True, keep=str(tmp_path), point_timeout=120)
    path = tmp_path / "scale.json"
    report.write_json(path)
    rows = {r["name"]: r for r in json.loads(path.read_text())}
    for row in rows.values():
        for key, tp in suite.SCHEMA["row"].items():
            assert isinstance(row.get(key), tp) or (row.get(key) is None and type(None) in tp), (row, key)
    assert rows["scale_rounds_completed_n2"]["median"] == 2
    for key in ("round_s", "round_cpu_s", "fog_cpu_s", "fog_rss_mb", "fog_round0_peak_mb", "deliveries",
                "broker_mb", "blob_mb_per_device_round", "round0_s", "warm_start_s", "verify_ms_per_block",
                "chain_blocks", "chain_txs"):
        assert rows[f"scale_{key}_n2"]["median"] > 0, key
    assert rows["scale_stale_n2"]["median"] == 0
    assert (tmp_path / "n2" / "fog.log").exists()  # kept: the site, logs and metrics of the run
