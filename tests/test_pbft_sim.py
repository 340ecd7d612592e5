"""The PBFT core under a seeded simulated network: many random schedules with byzantine members, safety
checked after every run; liveness after a crashed or equivocating leader in simulated time; restarts from
the vote log; evidence; checkpoints."""

import random

import pytest

from edgefl import codec
from edgefl.consensus.evidence import check_behaviour
from edgefl.consensus.pbft import Vote
from edgefl.consensus.simnet import Sim
from edgefl.consensus.votelog import VoteLog

KINDS = ["silent", "equivocate", "bad_sig", "replay", "eager"]


def load(sim, count=30, every=0.01, start=0.0, tag=b"tx"):
    for i in range(count):
        sim.submit(tag + b"%d" % i, at=start + i * every)


@pytest.mark.parametrize("seed", range(40))
def test_random_schedules_never_fork(seed):
    rng = random.Random(seed)
    n = rng.choice([4, 4, 4, 7])
    f = (n - 1) // 3
    faulty = rng.sample([f"r{i:02}" for i in range(n)], rng.randint(0, f))
    byz = {i: rng.choice(KINDS) for i in faulty}
    crash = {i: rng.uniform(0.05, 0.5) for i in faulty if byz[i] == "silent" and rng.random() < 0.5}
    lo = rng.uniform(0.0005, 0.003)
    sim = Sim(n, seed=seed, byzantine=byz, crash_at=crash, delay=(lo, lo + rng.uniform(0.001, 0.02)),
              drop=rng.choice([0.0, 0.02, 0.1]), duplicate=rng.choice([0.0, 0.1]), view_timeout=0.1,
              window=rng.choice([1, 2, 4, 8]), checkpoint_every=rng.choice([2, 4, 8]), batch=rng.choice([1, 3, 8]))
    load(sim, count=20, every=rng.uniform(0.002, 0.02))
    sim.run(4.0)
    top = sim.check_safety()
    assert top >= 1, (byz, crash)  # honest members made progress despite the faults
    for node in sim.honest():  # and every request got committed everywhere
        assert {q for raw in node.blocks for q in codec.decode(raw)[2]} >= {b"tx%d" % i for i in range(20)}


@pytest.mark.parametrize("kind", ["silent", "equivocate"])
def test_progress_resumes_within_two_view_timeouts_after_a_bad_leader(kind):
    timeout, t_bad = 0.2, 0.3
    byz = {"r00": kind}
    sim = Sim(4, seed=7, byzantine=byz, crash_at={"r00": t_bad} if kind == "silent" else None,
              view_timeout=timeout)
    if kind == "equivocate":  # an honest leader first, then r00 leads view 1 and equivocates
        sim = Sim(4, seed=7, byzantine={"r01": "equivocate"}, view_timeout=timeout)
        sim.call(t_bad, lambda: [n.replica._start_view_change(1) for n in sim.nodes.values()])
    load(sim, count=100, every=0.01)
    sim.run(1.5)
    sim.check_safety()
    gaps, last = [], None
    for t in sorted(sim.commit_times):
        if last is not None and t > t_bad - timeout:
            gaps.append(t - last)
        last = t
    assert max(gaps) <= 2 * timeout, max(gaps)
    assert max(len(n.committed) for n in sim.honest()) > 20
    if kind == "equivocate":
        records = [r for n in sim.honest() for r in n.evidence]
        for r in records:
            assert r.member == "r01" and r.kind == "equivocated"
            check_behaviour(r, sim.committee)


def test_sixteen_replicas_with_five_byzantine_commit_and_never_fork():
    byz = {"r00": "equivocate", "r01": "silent", "r02": "bad_sig", "r03": "replay", "r04": "eager"}
    sim = Sim(16, seed=3, byzantine=byz, view_timeout=0.2, delay=(0.001, 0.004))
    load(sim, count=12, every=0.02)
    sim.run(2.5)
    assert sim.check_safety() >= 3
    assert all(len(n.committed) > 3 for n in sim.honest())


def test_a_restarted_replica_never_signs_against_its_vote_log_and_catches_up(tmp_path):
    logs = {f"r{i:02}": VoteLog(tmp_path / f"r{i:02}.votes") for i in range(4)}
    sim = Sim(4, seed=11, view_timeout=0.1, votelogs=logs, checkpoint_every=2, window=4)
    load(sim, count=60, every=0.01)
    victim = "r02"

    def kill():
        sim.nodes[victim].crash_at = sim.now  # stops mid-protocol, its messages in flight are lost

    refused = []

    def restart():
        sim.nodes[victim].crash_at = None
        log = VoteLog(tmp_path / f"{victim}.votes")  # reread from disk
        sim.restart(victim, log)
        # what it signed before the kill binds it after the restart
        r = sim.nodes[victim].replica
        for slot in list(log.entries):
            if slot[0] == "prepare":
                _, chain, view, height = slot
                refused.append(r._sign(Vote(chain, "prepare", view, height, b"\xee" * 32, victim), slot) is None)
                assert r._sign(Vote(chain, "prepare", view, height, bytes(32), victim)) is not None  # slotless

    sim.call(0.2, kill)
    sim.call(0.35, restart)
    sim.run(1.5)
    sim.check_safety()
    heights = [len(n.committed) for n in sim.nodes.values()]
    assert heights[2] >= min(heights) and heights[2] > 10, heights  # it caught up (state transfer)
    assert refused and all(refused)
    assert sim.metrics.get("pbft_refused_to_sign", kind="pbft.vote") == len(refused)


def test_checkpoints_truncate_the_log():
    sim = Sim(4, seed=5, checkpoint_every=4, window=4)
    load(sim, count=60, every=0.005)
    sim.run(2.0)
    sim.check_safety()
    for node in sim.honest():
        r = node.replica
        assert r.stable >= r.committed - 2 * r.checkpoint_every and r.stable > 8
        assert all(k[-1] > r.stable for k in r.votelog.entries if k[0] != "view-change")
        assert all(h > r.stable for h in r.prepared)
        # a committed height's block lives in the store, not in the replica: memory stays bounded
        assert all(h > r.committed for h in r.slots), sorted(r.slots)


def test_votes_with_bad_signatures_or_from_strangers_count_for_nothing():
    sim = Sim(4, seed=2, byzantine={"r01": "bad_sig", "r02": "bad_sig"})  # two faulty of four: no quorum
    load(sim, count=10)
    sim.run(1.0)
    assert sim.check_safety() == 0  # never certified with forged votes
    assert sim.metrics.get("pbft_rejected", reason="bad_signature") > 0


def test_a_new_epochs_committee_takes_the_epoch_block_as_its_first_stable_point():
    """A committee seated at an epoch block has no certificate of its own for it (the one before signed it):
    a view change standing there counts when it names that very block, and nothing below it counts at all."""
    from edgefl.consensus.pbft import Fetch, Replica, ViewChange
    from edgefl.crypto.keys import SigningKey
    from edgefl.ledger.committee import Committee
    from edgefl.runtime.metrics import Metrics

    keys = {f"m{i}": SigningKey(bytes([i + 1]) * 32) for i in range(5)}
    seated = Committee.bft([(m, keys[m].public_key) for m in ["m0", "m1", "m2", "m3"]])
    base = (8, b"\x08" * 32)

    class App:
        def block_hash(self, raw):
            return raw[:32]

        def prev_hash(self, raw):
            return raw[32:64]

    def replica(me, base_hash=base[1], height=8):
        return Replica(me, keys[me], seated, "c", App(), height=height, tip_hash=base_hash, limit=12,
                       base=(8, base_hash), peers=list(keys), metrics=Metrics())

    a, b, wrong = replica("m0"), replica("m1"), replica("m2", base_hash=b"\x09" * 32)
    a._start_view_change(1)
    vc = next(s.msg for s in a.take() if isinstance(s.msg, ViewChange))
    assert vc.stable == 8 and vc.stable_sigs == []
    b.receive("m0", vc)
    assert "m0" in b.changes.get(1, {})  # its stable point is the epoch block both stand on
    wrong.receive("m0", vc)
    assert "m0" not in wrong.changes.get(1, {}) and wrong.metrics.get("pbft_rejected", reason="bad_view_change") == 1
    low = replica("m3", height=8)
    low.base = (12, b"\x0c" * 32)  # a committee of a later epoch: a view change from before it began is void
    low.receive("m0", vc)
    assert "m0" not in low.changes.get(1, {})
    # the pool may ask it for blocks; only the seated may speak in the protocol
    follower = replica("m4")
    assert not follower.member and follower._sign(vc) is None
    b.receive("m4", Fetch(1))
    b.receive("m4", vc)
    assert b.metrics.get("pbft_rejected", reason="not_member") == 1
    # and it certifies nothing past its epoch block
    assert not b._in_window(13) and b._in_window(12)


def test_a_replica_alone_in_a_later_view_keeps_up_with_the_committee():
    """One replica times out alone (a loaded fog) and moves to view 1; the other three stay in view 0 and go on.
    It cannot vote in view 0 any more, but it commits each block as soon as the commit certificate comes — from
    the proposal it kept, or by an immediate state transfer — not one block per view timeout."""
    sim = Sim(4, seed=11, view_timeout=0.2)
    lone = "r03"
    sim.call(0.05, lambda: sim.nodes[lone].replica._start_view_change(1))
    load(sim, count=40, every=0.01, start=0.1)
    seen = {}
    sim.call(0.56, lambda: seen.update({i: len(n.committed) for i, n in sim.nodes.items()}))
    sim.run(1.0)
    sim.check_safety()
    others = [seen[i] for i in seen if i != lone]
    assert sim.nodes["r00"].replica.view == 0 and sim.nodes[lone].replica.view >= 1
    assert seen[lone] == max(others) > 5, seen  # level with the committee 60 ms after the last request


@pytest.mark.parametrize("n", [3, 4, 7])
def test_every_request_commits_across_a_view_change_at_any_moment(n):
    """All members move to view 1 at a random moment, whatever each has committed: the new leader may lag
    behind the NewView's stable point, and then re-proposes the carried blocks only once it has fetched the
    block there (it used to propose at its own height, which every member refused: the chain stalled)."""
    for seed in range(12):
        rng = random.Random(seed)
        sim = Sim(n, seed=seed, view_timeout=0.1, delay=(0.001, 0.01), drop=rng.choice([0.0, 0.02, 0.1]),
                  duplicate=0.1, window=rng.choice([1, 2, 4, 8]), checkpoint_every=rng.choice([2, 4, 8]))
        load(sim, count=20)
        sim.call(rng.uniform(0.01, 0.2), lambda: [node.replica._start_view_change(1) for node in sim.nodes.values()])
        sim.run(6.0)
        sim.check_safety()
        for node in sim.honest():
            assert {q for raw in node.blocks for q in codec.decode(raw)[2]} >= {b"tx%d" % i for i in range(20)}, seed
