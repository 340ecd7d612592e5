"""The reputation-weighted draw of a round's participants: its distribution, its floor, its record, and a fog
drawing over a real Mosquitto."""

import collections

import pytest

from edgefl.fl.protocol import FogUpdate
from edgefl.fl.selection import FLOOR, Selection, check_selection, select, selection_seed, weight
from tests.test_fl_round import SETTINGS, chain_of, final_model, records


def test_the_draw_follows_reputation_and_the_floor_gives_everyone_a_chance():
    names = ["good", "newcomer", "fallen"]
    weights = [weight(0.9), weight(0.5), weight(0.01)]
    assert weights == [0.9, 0.5, FLOOR]
    counts = collections.Counter()
    for r in range(3000):
        chosen = select(names, weights, 1, seed=selection_seed("t", r, "fog-a", b"\0" * 32))
        assert len(chosen) == 1
        counts[chosen[0]] += 1
    # one pick of Efraimidis–Spirakis is exactly proportional to the weights
    share = {n: counts[n] / 3000 for n in names}
    assert share["good"] == pytest.approx(0.9 / 1.5, abs=0.04) and share["newcomer"] == pytest.approx(0.5 / 1.5,
                                                                                                       abs=0.04)
    assert 0.03 < share["fallen"] < 0.11  # 0.1 / 1.5 ≈ 0.067: the floor keeps it in the running


def test_a_draw_is_deterministic_recorded_and_checked():
    names, weights = [f"d{i}" for i in range(6)], [0.2, 0.9, 0.5, 0.5, 0.1, 0.7]
    seed = selection_seed("t", 0, "fog-a", b"\1" * 32)
    chosen = select(names, weights, 3, seed=seed)
    assert chosen == sorted(chosen) and len(set(chosen)) == 3 and chosen == select(names, weights, 3, seed=seed)
    assert select(names, weights, 10, seed=seed) == names  # fewer candidates than places: all of them
    assert selection_seed("t", 1, "fog-a", b"\1" * 32) != seed != selection_seed("t", 0, "fog-b", b"\1" * 32)
    rec = Selection("t", 0, seed, names, weights, 3, chosen)
    assert check_selection(rec)
    others = [n for n in names if n not in chosen]
    assert not check_selection(Selection("t", 0, seed, names, weights, 3, [*chosen[1:], others[0]]))
    with pytest.raises(ValueError, match="positive"):
        select(names, [0.0] * 6, 3, seed=seed)


async def test_a_fog_trains_the_participants_it_drew_and_records_the_draw(broker, tmp_path):
    from edgefl.nodes.site import LocalSite

    devices = ["dev-1", "dev-2", "dev-3", "dev-4"]
    site = LocalSite(tmp_path, broker.port, {"fog-a": devices}, clients=("auditor",), settings=SETTINGS,
                     per_node={"cloud-1": ["fl.items=200"], "fog-a": ["fl.participants=2"]})
    async with site:
        await final_model(site, rounds=2)
    with chain_of(site, "fog-a") as sub:
        draws = sorted((s for _, s in records(sub, Selection)), key=lambda s: s.round)
    with chain_of(site, "cloud-1") as main:
        updates = sorted((u for _, u in records(main, FogUpdate)), key=lambda u: u.round)
    assert [(s.round, s.candidates, len(s.chosen)) for s in draws] == [(0, devices, 2), (1, devices, 2)]
    assert [u.devices for u in updates] == [s.chosen for s in draws]  # exactly the drawn devices trained
    assert all(check_selection(s) for s in draws)
    assert draws[0].weights == [0.5] * 4  # nobody has a record yet: every one a newcomer
