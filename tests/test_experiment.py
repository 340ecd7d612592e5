"""`edgefl experiment` on tiny generated data: the JSON rows and plots it writes, the attacks and reputation
it measures through the simulation's own path; the batch normalisation of the design's Fig. 3."""

import json

import numpy as np
import pytest

from edgefl.cli import main
from edgefl.experiments.lab import Lab, Setting, default_data, make_attacks
from edgefl.fl import attacks as A
from edgefl.fl.attacks import Attack
from edgefl.fl.simulation import SimDevice, run_rounds
from edgefl.ml import trainer as T
from edgefl.ml.data import synthetic_digits
from edgefl.ml.privacy import (
    NoNoise,
    PrivacyError,
    Privatiser,
    batch_normalise,
    bound,
    normalise,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lab():
    return Lab(synthetic_digits(300, seed=3), train=200, test=100, source="generated digits")


def test_default_data_is_a_folder_or_nothing():
    found = default_data()
    assert found is None or (found.is_dir() and found.name == "mnist")


def test_attack_experiment_writes_rows_tables_and_plots(tmp_path):
    out = tmp_path / "ex"
    rc = main(["experiment", "attacks", "--data", "generated", "--train", "200", "--test", "100", "--rounds", "2",
               "--aggregators", "fedavg,median,bulyan", "--attacks", "labelflip,backdoor,signflip",
               "--fractions", "0.3", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "attacks.json").read_text())
    rows = doc["rows"]
    assert len(rows) == 3 + 3 * 3  # the clean row of each aggregator, then attack × aggregator
    assert {(r["aggregator"], r["attack"]) for r in rows} == {
        (a, x) for a in ("fedavg", "median", "bulyan") for x in ("none", "labelflip", "backdoor", "signflip")}
    for r in rows:
        assert r["experiment"] == "attacks" and sum(r["items"]) == 200 and len(r["items"]) == 20
        if r["attack"] == "none":
            assert r["attackers"] == [] and r["malicious"] == 0
        else:
            assert len(r["attackers"]) == 6 and r["f"] == 6  # 30 % of 20, and the aggregators are told so
        if r["aggregator"] == "bulyan" and r["attack"] != "none":
            assert "4f+3" in r["error"] and "accuracy" not in r  # 20 < 4·6 + 3: refused, not run
            continue
        assert len(r["accuracy"]) == len(r["loss"]) == 2 and all(0 <= a <= 1 for a in r["accuracy"])
        assert all(np.isfinite(r["loss"]))
        assert (r["asr"] is not None) == (r["attack"] == "backdoor")
        if r["attackers"]:
            assert len(r["reputation"]["honest"]) == len(r["reputation"]["attackers"]) == 2
            assert isinstance(r["reputation_separates"], bool)
        if r["aggregator"] == "fedavg" and r["attackers"]:
            # FedAvg keeps every update at its fair share: the attackers carry their 6 of 20 equal weights
            assert r["attacker_share"] == pytest.approx([0.3, 0.3])
            assert r["reputation"]["attackers"] == pytest.approx(r["reputation"]["honest"])
    assert {g["goal"].split(",")[0] for g in doc["goals"]} >= {"labelflip", "signflip", "backdoor"}
    for name in ("attacks", "backdoor", "reputation"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG
        assert f"({name}.png)" in (out / "attacks.md").read_text()
    assert "| signflip |" in (out / "attacks.md").read_text()


def test_privacy_experiment_compares_both_normalisations(tmp_path):
    out = tmp_path / "px"
    rc = main(["experiment", "privacy", "--quick", "--data", "generated", "--train", "200", "--test", "100",
               "--epsilons", "1", "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "privacy.json").read_text())["rows"]
    assert {(r["normaliser"], r["epsilon"]) for r in rows} == {(n, e) for n in ("minmax", "batchnorm")
                                                               for e in (1.0, None)}
    assert all(len(r["accuracy"]) == 2 and r["method"] == "fog" and r["devices"] == 10 for r in rows)
    assert (out / "privacy.png").read_bytes()[:8] == PNG


def test_gaussian_attackers_are_rejected_by_krum_and_lose_reputation(lab):
    row = lab.run(Setting("t", devices=10, rounds=3, epochs=1, aggregator="krum", attack="gaussian", malicious=0.2))
    assert len(row["attackers"]) == 2
    # N(0, 1) in each of 400k coordinates is far from every honest model: never the one Krum picks
    assert row["attacker_share"] == [0.0, 0.0, 0.0]
    assert all(r < 0.5 for r in row["reputation"]["attackers"]) and row["reputation"]["attackers"][-1] == 0.2


def test_data_attacks_poison_only_the_attackers_data(lab):
    flip = A.make("labelflip")
    rows = np.flatnonzero(lab.train.labels[:40] == 1)[:5]
    features, labels = lab.poisoned("random", flip, "device-00", rows, 0)
    assert (labels == 7).all() and (lab.train.labels[rows] == 1).all()  # 1 → 7, the images untouched
    assert np.allclose(features, lab.features("random", "train")[rows])
    bd = A.make("backdoor")
    features, labels = lab.poisoned("random", bd, "device-00", np.arange(10), 1)
    triggered = labels == bd.target
    assert not np.allclose(features[triggered & (lab.train.labels[:10] != 0)],
                           lab.features("random", "train")[:10][triggered & (lab.train.labels[:10] != 0)])
    assert make_attacks("backdoor+scaling", 20, 6)[0] == bd and make_attacks("none", 20, 0) == (None, None)


class _Origin(Attack):
    """Sends the round's model unchanged and remembers how many honest models it saw."""

    name, kind = "origin", "update"

    def __init__(self):
        self.seen = []

    def update(self, own, honest, *, origin, seed=0):
        self.seen.append(len(honest))
        return [np.array(p, copy=True) for p in origin]


def test_simulation_applies_update_attacks_and_per_round_data(lab):
    x = lab.features("random", "train")
    y = lab.train.labels
    cfg = T.TrainConfig(layers=[3920, 16, 10], optimizer="adam", lr=1e-3, batch_size=16, seed=0)
    attack, asked = _Origin(), []

    def data(r):
        asked.append(r)
        return x[150:200], y[150:200]

    devices = [SimDevice(f"d{i}", x[i * 50:(i + 1) * 50], y[i * 50:(i + 1) * 50],
                         Privatiser(NoNoise(), epsilon=1.0, batch_size=16)) for i in range(3)]
    devices[0].attack = attack
    devices[2].data = data
    seen = []
    run_rounds(devices, config=cfg, rounds=2, epochs=1, test_features=lab.features("random", "test"),
               test_labels=lab.test.labels, on_round=seen.append)
    assert asked == [0, 1] and attack.seen == [2, 2]  # the two honest models of each round
    origin = T.init_model(cfg.layers, seed=0).params
    assert all(np.array_equal(a, b) for a, b in zip(seen[0].updates[0].params, origin))
    assert all(np.array_equal(a, b) for a, b in zip(seen[1].updates[0].params, seen[0].model.params))
    assert [r.round for r in seen] == [0, 1] and seen[1].result.weights == pytest.approx([1 / 3] * 3)


def test_batch_normalisation_stays_within_the_design_bound():
    rng = np.random.default_rng(0)
    x = rng.exponential(size=(150, 40))
    x[:, 3] = 5.0  # constant: 0
    x[:64, 4] = 0.0
    x[0, 4] = 9.0  # one outlier among 64: exactly √63 (Samuelson's bound is tight)
    z = batch_normalise(x, 64)
    assert np.abs(z).max() <= bound(64) + 1e-12
    assert z[0, 4] == pytest.approx(bound(64)) and (z[:, 3] == 0).all()
    for at in (0, 64, 128):  # standardised batch by batch: the last one holds 22 rows
        assert np.allclose(z[at:at + 64].mean(axis=0), 0) and np.allclose(z[at:at + 64, :3].std(axis=0), 1)
    p = Privatiser(NoNoise(), epsilon=1.0, batch_size=64, normaliser="batchnorm")
    assert np.allclose(p.release(np.arange(150), x).values, z.astype(np.float32))
    assert np.array_equal(Privatiser(NoNoise(), epsilon=1.0, batch_size=64).normalise(x), normalise(x, 64))
    with pytest.raises(PrivacyError, match="unknown normaliser"):
        Privatiser(NoNoise(), epsilon=1.0, batch_size=64, normaliser="layer")
    with pytest.raises(PrivacyError, match="NaN"):
        batch_normalise(np.full((2, 2), np.nan), 64)


def test_experiment_refuses_unknown_names(capsys):
    assert main(["experiment", "attacks", "--data", "generated", "--attacks", "teleport"]) == 1
    assert "unknown aggregator or attack: teleport" in capsys.readouterr().err


def test_an_interrupted_run_resumes_from_its_journal(tmp_path, capsys):
    args = ["experiment", "devices", "--quick", "--data", "generated", "--train", "200", "--test", "100",
            "--rounds", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    first = json.loads((tmp_path / "devices.json").read_text())["rows"]
    journal = tmp_path / "devices.rows.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 3  # the header, then one row per setting (5, 10, 20 devices)
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # killed while writing the last row
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "resuming: 2 rows" in capsys.readouterr().err
    again = json.loads((tmp_path / "devices.json").read_text())["rows"]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]  # seeded, no DP: the same run
    assert len(journal.read_text().splitlines()) == 4
    other = args[:-1] + [str(tmp_path), "--train", "150"]  # other data: the journal is not reused
    assert main(other + ["--resume"]) == 0
    assert "resuming" not in capsys.readouterr().err
