"""`edgefl bench all` and `bench compare`: percentiles, goals, the published table, the JSON schema, the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefl.bench import compare, published, report, suite
from edgefl.bench.harness import percentile

REPO = Path(__file__).resolve().parents[1]


def test_percentile_by_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([3, 1, 2], 50) == 2  # unsorted input; rank ceil(1.5) = 2
    assert percentile([10, 20, 30, 40], 99) == 40  # rank ceil(3.96) = 4
    assert percentile([10, 20, 30, 40], 25) == 10  # rank 1


@pytest.mark.parametrize("goal, value, unit, met", [
    ("<= 20 ms", 8.6, "ms", True), ("<= 20 ms", 20.0, "ms", True), ("<= 20 ms", 20.1, "ms", False),
    (">= 5000 tx/s", 7056.0, "ops/s", True), (">= 5000 tx/s", 4999.0, "ops/s", False),
    ("<= 2 s", 1500.0, "ms", True), ("<= 2 s", 2500.0, "ms", False), ("<= 5 ms", 0.004, "s", True),
    ("<= 1.3", 1.92, "ratio", False), (">= 97", 98.4, "%", True),
    (None, 1.0, "ms", None), ("fast", 1.0, "ms", None), ("<= 1 ms", float("nan"), "ms", None)])
def test_goal_met(goal, value, unit, met):
    assert published.goal_met(goal, value, unit) is met


def _row(name, unit, median, p99=None, **kw):
    return {"name": name, "unit": unit, "median": median, "p99": median if p99 is None else p99, **kw}


def test_published_table_takes_the_first_row_present_in_the_anchors_unit():
    rows = {"consensus": [_row("commit_tx_n4", "ms", 4.0, goal="<= 5 ms")],
            "crypto": [_row("verify_tx", "ms", 0.074, cpu_pct=101.0), _row("verify_vote", "ms", 0.3)],
            "ledger": [_row("append_tps_32B", "ops/s", 7000.0)]}
    table = {(e["table"], e["operation"]): e for e in published.table(rows)}
    commit = table[(published.LATENCY, "commit transaction, 4 nodes")]
    assert commit["row"] == "consensus.commit_tx_n4" and commit["measured"] == pytest.approx(0.004)  # ms -> s
    assert commit["ratio"] == pytest.approx(0.004 / 0.16) and commit["met"] is True
    verify = table[(published.MICRO, "verify transaction")]
    assert verify["ratio"] == pytest.approx(0.074 / 47) and verify["ratio_pi"] == pytest.approx(0.074 / 179)
    assert verify["cpu_pct"] == 101.0
    # verify vote: no consensus row, so the crypto layer's
    assert table[(published.MICRO, "verify vote")]["row"] == "crypto.verify_vote"
    tps = table[(published.FABRIC, "32B: throughput")]
    assert tps["row"] == "ledger.append_tps_32B" and tps["ratio"] == pytest.approx(7000 / 193.33)
    missing = table[(published.LATENCY, "chain finality, 16 nodes")]
    assert missing["row"] is None and missing["measured"] is None and missing["ratio"] is None
    assert len(table) == len(published.ANCHORS)  # every anchor is a row, measured or not


def _run_file(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return compare.load(path)


def test_compare_flags_a_2x_regression_and_not_a_5_percent_wobble(tmp_path):
    a = _run_file(tmp_path, "a.json", [_row("op", "ms", 1.0, 1.04), _row("steady", "ms", 10.0, 10.2),
                                       _row("rate", "ops/s", 1000.0, 980.0), _row("faster", "ms", 4.0, 4.1),
                                       _row("noisy", "ms", 1.0, 1.5), _row("only_a", "ms", 1.0)])
    b = _run_file(tmp_path, "b.json", [_row("op", "ms", 2.0, 2.1), _row("steady", "ms", 10.5, 10.8),
                                       _row("rate", "ops/s", 400.0, 390.0), _row("faster", "ms", 1.0, 1.02),
                                       _row("noisy", "ms", 1.4, 1.9), _row("only_b", "ms", 1.0)])
    result = {r["name"]: r for r in compare.compare(a, b)}
    assert set(result) == {"op", "steady", "rate", "faster", "noisy"}
    assert result["op"]["verdict"] == "worse" and result["op"]["ratio"] == pytest.approx(2.0)
    assert result["steady"]["verdict"] == "same"  # +5 %: never flagged
    assert result["rate"]["verdict"] == "worse"  # a rate that fell
    assert result["faster"]["verdict"] == "better"
    assert result["noisy"]["verdict"] == "same"  # +40 % inside a run whose own p99 sat 50 % above its median
    assert result["noisy"]["threshold"] == pytest.approx(1.5)
    text = compare.table(list(result.values()))
    assert "5 rows compared, 3 beyond their spread (2 worse)" in text


def test_compare_reads_bench_all_reports_by_layer(tmp_path):
    doc = {"schema": suite.SCHEMA_VERSION, "layers": [{"name": "crypto", "rows": [_row("verify_tx", "ms", 0.07)]}]}
    path = tmp_path / "all.json"
    path.write_text(json.dumps(doc))
    assert list(compare.load(path)) == ["crypto.verify_tx"]
    path.write_text("{}")
    with pytest.raises(ValueError):
        compare.load(path)


def _doc(**layers):
    entries = [{"name": n, "status": "ok", "seconds": 1.0, "rows": rows, "error": ""} for n, rows in layers.items()]
    entries.append({"name": "scale", "status": "missing", "seconds": 0.0, "rows": [], "error": "no such layer"})
    return {"schema": suite.SCHEMA_VERSION, "created": "2026-01-01T00:00:00+00:00", "quick": True, "profile": None,
            "machine": {"edgefl": "0", "python": "3", "machine": "x", "cpus": 2, "system": "s", "native": {}},
            "seconds": 2.0, "layers": entries, "published": published.table(layers)}


def test_schema_check_names_what_is_wrong():
    doc = _doc(crypto=[_row("verify_tx", "ms", 0.07, goal="<= 0.2 ms")])
    suite.check_schema(doc)
    bad = json.loads(json.dumps(doc))
    del bad["layers"][0]["rows"][0]["unit"]
    with pytest.raises(ValueError, match=r"layers\[0\]\.rows\[0\]\.unit is missing"):
        suite.check_schema(bad)
    bad = json.loads(json.dumps(doc))
    bad["published"][0]["anchor"] = "47"
    with pytest.raises(ValueError, match=r"published\[0\]\.anchor is str"):
        suite.check_schema(bad)


def test_report_files_and_readme_section(tmp_path):
    doc = _doc(crypto=[_row("verify_tx", "ms", 0.07, goal="<= 0.2 ms")],
               ledger=[_row("mine_block", "ms", 3.0, goal="<= 2 ms")])
    paths = report.write(doc, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| crypto | ok | 1 | 1 | 1 of 1 |" in md and "| ledger | ok | 1 | 1 | 0 of 1 |" in md
    assert "| scale | missing |" in md and "no such layer" in md
    assert "| verify transaction | 47 ms | 179 | 0.07 |" in md
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<table>" in page and "src='http" not in page  # self-contained
    if any(p.suffix == ".png" for p in paths):
        assert "data:image/png;base64," in page
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\ntext\n")
    report.update_readme(readme, doc, tmp_path / "out")
    report.update_readme(readme, doc, tmp_path / "out")  # idempotent: replaces, never appends twice
    text = readme.read_text()
    assert text.count("bench-all:begin") == 1 and text.startswith("# x\n\ntext\n")
    assert "Reproduce with `edgefl bench all --quick --out out --readme README.md`" in text


@pytest.mark.skipif(os.environ.get("EDGEFL_NO_EXTENSIONS") == "1",
                    reason="the quick run is exercised once, in the pass with the compiled extensions")
def test_quick_run_of_chosen_layers_writes_a_checked_report(tmp_path):
    """The real command end to end on two cheap layers (every layer's own quick form has its own test)."""
    chosen = ["crypto", "accumulator"]
    out = subprocess.run([sys.executable, "-m", "edgefl", "bench", "all", "--quick", "--layers", ",".join(chosen),
                          "--out", str(tmp_path / "r"), "--json", str(tmp_path / "all.json")],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads((tmp_path / "all.json").read_text())
    suite.check_schema(doc)
    assert [e["name"] for e in doc["layers"]] == chosen
    assert all(e["status"] == "ok" and e["rows"] for e in doc["layers"])
    md = (tmp_path / "r" / "report.md").read_text()
    for layer in chosen:
        assert f"| {layer} |" in md
    assert all(e["measured"] is not None for e in doc["published"] if e["row"] and e["row"].startswith("crypto."))


def test_bench_report_rewrites_the_report_and_readme_from_a_json(tmp_path, capsys):
    from edgefl.cli import main

    doc = _doc(crypto=[_row("verify_tx", "ms", 0.07, goal="<= 0.2 ms")])
    (tmp_path / "all.json").write_text(json.dumps(doc))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.README_BEGIN}\nSTALE-SECTION\n{report.README_END}\n\nafter\n")
    assert main(["bench", "report", str(tmp_path / "all.json"), "--out", str(tmp_path / "r"),
                 "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "STALE-SECTION" not in text and text.endswith("\n\nafter\n") and "| crypto | ok | 1 |" in text
    assert (tmp_path / "r" / "report.md").exists() and "## The published tables" in capsys.readouterr().out
    bad = dict(doc, schema="other/9")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["bench", "report", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r2")]) == 1
