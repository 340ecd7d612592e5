"""`edgefl accumulator …` and `edgefl bench accumulator`, run as a user would."""

import json

import pytest

from edgefl.bench.harness import interleave
from edgefl.crypto import accumulator as acc
from tests.test_cli import edgefl


def test_info_prints_the_rsa2048_parameters():
    out = edgefl("accumulator", "info")
    assert out.returncode == 0, out.stderr
    params = json.loads(out.stdout)
    assert int(params["modulus"]) == acc.RSA2048_N and int(params["generator"]) == acc.GENERATOR
    assert acc.Group.from_params(params) == acc.RSA2048


def test_setup_writes_parameters(tmp_path):
    out = edgefl("accumulator", "setup", "--out", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    assert acc.Group.from_params(json.loads((tmp_path / "p.json").read_text())).modulus == acc.RSA2048_N
    out = edgefl("--log-level", "ERROR", "accumulator", "setup", "--distributed", "--peers", "fog-1,fog-2,fog-3",
                 "--bits", "160", "--out", str(tmp_path / "joint.json"))
    assert out.returncode == 0, out.stderr
    assert "3 peers agreed on a 160-bit modulus" in out.stdout
    params = json.loads((tmp_path / "joint.json").read_text())
    grp = acc.Group.from_params(params)
    assert grp.modulus.bit_length() == 160 and params["peers"] == ["fog-1", "fog-2", "fog-3"]
    tampered = {**params, "modulus": str(grp.modulus + 2)}
    with pytest.raises(acc.AccumulatorError, match="modulus_sha256"):
        acc.Group.from_params(tampered)
    with pytest.raises(acc.AccumulatorError, match="modulus"):
        acc.Group.from_params({"generator": "5"})


def test_setup_errors_are_one_line():
    out = edgefl("accumulator", "setup", "--distributed", "--peers", "a,b", "--bits", "160")
    assert out.returncode == 1
    assert out.stderr.strip() == "edgefl accumulator: SetupError: need 3..64 distinct peers, got 2"


def test_bench_accumulator_quick_writes_table_and_json(tmp_path):
    out = edgefl("--log-level", "ERROR", "bench", "accumulator", "--quick", "--sizes", "2,8", "--rootfactor", "16",
                 "--chain", "16", "--setup-bits", "128", "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md"))
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "a.json").read_text())}
    for name in ("update", "proofgen_n16", "proofverf", "hash_to_prime", "batch_verify_independent_t8",
                 "batch_verify_ratio_unweighted_t8", "batch_verify_ratio_weighted_t8",
                 "batch_verify_ratio_weighted_pure_t8", "aggregated_verify_ratio_t8", "multiexp_pure_t8",
                 "rootfactor_n16", "rootfactor_naive_n16", "rootfactor_speedup_n16", "distributed_setup_128_k3"):
        assert name in rows, name
        assert {"name", "unit", "median", "p99"} <= set(rows[name])
    assert rows["batch_verify_ratio_unweighted_t8"]["anchor"] == 0.124
    assert rows["batch_verify_ratio_weighted_t8"]["goal"] == "<= 0.35"
    assert rows["batch_verify_ratio_weighted_t8"]["unit"] == "ratio"
    assert "batch_verify_ratio_weighted_t8" in (tmp_path / "a.md").read_text()
    assert "batch_verify_ratio_weighted_t8" in out.stdout


def test_interleave_rotates_and_counts():
    calls = []
    samples = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=4, per_round=2,
                         warmup=1)
    assert len(samples["a"].wall) == len(samples["b"].wall) == 8
    assert calls[:2] == ["a", "b"]  # warm-up
    assert calls[2:6] == ["a", "a", "b", "b"] and calls[6:10] == ["b", "b", "a", "a"]
