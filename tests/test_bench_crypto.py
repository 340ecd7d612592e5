"""`edgefl bench crypto` runs end to end and reports every operation beside its raw coincurve call."""

import json

from edgefl.bench import crypto

OPS = ["ecdsa_sign", "ecdsa_verify", "schnorr_sign", "schnorr_verify", "cert_chain_check", "verify_tx",
       "verify_vote", "vrf_prove", "vrf_verify", "sortition_verify"]


def test_bench_crypto_quick(tmp_path):
    report = crypto.run_sync(quick=True)
    rows = {r.name: r for r in report.rows}
    for op in OPS:
        assert rows[op].unit == "ms" and rows[op].median > 0
        assert rows[f"{op}_raw"].median > 0
        assert rows[f"{op}_ratio"].ratio == rows[op].median / rows[f"{op}_raw"].median
    assert rows["verify_tx"].anchor == 47.0 and rows["verify_tx"].goal
    assert rows["cert_lookup"].median > 0
    report.write_json(tmp_path / "c.json")
    assert {r["name"] for r in json.loads((tmp_path / "c.json").read_text())} == set(rows)
