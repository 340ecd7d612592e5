"""`edgefl bench accumulator`: RSA accumulator operations, batch verification and RootFactor, side by side.

All on the RSA-2048 modulus with 256-bit prime representatives, interleaved
in one process so that a noisy machine shifts every variant alike:

* single operations: update, ProofGen (one witness in a 256-block chain),
  ProofVerf (hash-to-prime of the block, then w^x = v), hash-to-prime;
* batch verification of t = 8, 32, 128 claims against t independent checks,
  as cost ratios: (a) unweighted Protocol 3 (anchor: the design's 12.4 % at
  t = 8), (b) the Fiat–Shamir small-exponent test on the compiled and on the
  pure-Python multi-exponentiation, (c) an aggregated proof;
* multi-exponentiation with 256-bit exponents: compiled Straus against the
  best pure-Python method and against t separate powmods (anchors: figures
  measured on a 2-core x86-64 Debian machine);
* RootFactor against the naive method at n = 256 and 1024.  The naive method
  is n exponentiations of identical size, so it is timed on a sample of
  witnesses and scaled by n (the note says how many);
* optionally (``--setup-bits``) the distributed modulus generation.
"""

from __future__ import annotations

import importlib
import random
import statistics
import time

import gmpy2

from edgefl import native
from edgefl.bench.harness import Report, Row, Samples, interleave, ratio_row
from edgefl.crypto import accumulator as acc
from edgefl.crypto.accumulator import batch, primes

GOALS = {
    ("weighted", 8): "<= 0.35",
    ("weighted", 128): "<= 0.30",
    ("aggregated", 128): "<= 0.02",
}
DESIGN_UNWEIGHTED_T8 = 0.124  # the design's claim for Protocol 3 at t = 8, |N| = 2048
# Reference figures (ms, 2048-bit N, 256-bit exponents) measured on a 2-core x86-64 Debian machine.
ANCHOR_MULTIEXP = {"native": {8: 0.83, 32: 2.6, 128: 10.0}, "pure": {8: 1.2, 32: 3.9, 128: 15.0},
                   "separate": {8: 2.7, 32: 10.7, 128: 42.8}}


def add_arguments(p) -> None:
    p.add_argument("--sizes", default="8,32,128", help="batch sizes t (default 8,32,128)")
    p.add_argument("--rootfactor", default="256,1024", help="chain lengths n for RootFactor (default 256,1024)")
    p.add_argument("--chain", type=int, default=256, help="blocks in the chain for the single operations (default 256)")
    p.add_argument("--setup-bits", type=int, default=0,
                   help="also time the distributed modulus generation of this many bits (3 peers, in-process)")
    p.add_argument("--seed", type=int, default=1)


def _impls():
    pure = importlib.import_module("edgefl._pure.accumulator")
    try:
        compiled = importlib.import_module("edgefl._ext.accumulator")
    except ImportError:
        compiled = None
    if native.forced_pure():
        compiled = None
    return compiled, pure


def _chain(n: int) -> acc.Accumulator:
    a = acc.Accumulator()
    for i in range(n):
        a.add(f"benchmark block {i}".encode())
    return a


def _ms(name: str, s: Samples, **extra) -> Row:
    return s.row(name, **extra)


def _fail(name):
    raise AssertionError(f"{name} rejected a valid batch")


def _single_ops(report: Report, a: acc.Accumulator, ws: list[int], rounds: int) -> None:
    rng = random.Random(5)
    counter = iter(range(1 << 62))
    n = len(a)
    fresh = [(f"benchmark block {i}".encode(), i) for i in range(n)]

    def proofverf():
        data, i = fresh[rng.randrange(n)]
        primes._cache.clear()  # a verifier meets a block's representative for the first time
        assert acc.verify_block(data, i, ws[i], a.value)

    ops = {
        "update": lambda: acc.update(a.value, a.elements[rng.randrange(n)]),
        f"proofgen_n{n}": lambda: acc.witness(a.elements, rng.randrange(n)),
        "proofverf": proofverf,
        "hash_to_prime": lambda: acc.hash_to_prime(b"fresh %d" % next(counter)),
    }
    samples = interleave(ops, rounds=rounds, per_round=3)
    notes = {"update": "v^x, 256-bit x", f"proofgen_n{n}": "one witness g^{prod of n-1 others}",
             "proofverf": "hash-to-prime of the block + w^x == v", "hash_to_prime": "256-bit, BPSW"}
    for name, s in samples.items():
        report.add(_ms(name, s, note=notes[name]))


def _batch(report: Report, a: acc.Accumulator, ws: list[int], sizes: list[int], rounds: int) -> None:
    compiled, pure = _impls()
    verifiers = {
        "independent": batch.Independent(),
        "unweighted": batch.Unweighted(compiled or pure),
        "weighted": batch.SmallExponent(compiled or pure),
        "weighted_pure": batch.SmallExponent(pure),
        "aggregated": batch.Aggregated(compiled or pure),
    }
    for t in sizes:
        idx = list(range(t))
        statements = [(a.elements[i], a.value) for i in idx]
        witnesses = [ws[i] for i in idx]
        proofs = {name: v.prove(witnesses, statements) for name, v in verifiers.items()}

        def check(name):
            v, p = verifiers[name], proofs[name]
            return lambda: v.verify(statements, p) or _fail(name)

        s = interleave({name: check(name) for name in verifiers}, rounds=rounds, per_round=max(1, 32 // t))
        base = report.add(_ms(f"batch_verify_independent_t{t}", s["independent"], note=f"{t} separate w^x == v"))
        for name in ("unweighted", "weighted", "weighted_pure", "aggregated"):
            row_name = f"aggregated_verify_ratio_t{t}" if name == "aggregated" else f"batch_verify_ratio_{name}_t{t}"
            key = "weighted" if name == "weighted" else name
            note = {"unweighted": "(a) Protocol 3, unsound", "weighted": "(b) small-exponent, compiled",
                    "weighted_pure": "(b) small-exponent, pure Python", "aggregated": "(c) Shamir + Wesolowski"}[name]
            if name == "weighted" and compiled is None:
                note += " (not built: pure)"
            row = ratio_row(row_name, _ms(name, s[name]), base, goal=GOALS.get((key, t)), note=note)
            if name == "unweighted" and t == 8:
                row.anchor = DESIGN_UNWEIGHTED_T8
            report.add(row)


def _multiexp(report: Report, sizes: list[int], rounds: int) -> None:
    compiled, pure = _impls()
    rng = random.Random(9)
    n = acc.RSA2048_N
    for t in sizes:
        bases = [rng.randrange(2, n) for _ in range(t)]
        exps = [rng.getrandbits(256) | 1 << 255 for _ in range(t)]
        mb = [gmpy2.mpz(b) for b in bases]
        fns = {
            "separate": lambda: [gmpy2.powmod(b, e, n) for b, e in zip(mb, exps)],
            "pure_straus": lambda: pure.multi_exp(bases, exps, n),
            "pure_joint": lambda: pure.multi_exp_joint(bases, exps, n),
        }
        if compiled is not None:
            fns["native"] = lambda: compiled.multi_exp(bases, exps, n)
        s = interleave(fns, rounds=rounds, per_round=max(1, 32 // t))
        best = min(("pure_straus", "pure_joint"), key=lambda k: statistics.median(s[k].wall))
        pure_row = _ms(f"multiexp_pure_t{t}", s[best], anchor=ANCHOR_MULTIEXP["pure"].get(t),
                       note=f"best pure-Python ({best.split('_')[1]})")
        report.add(_ms(f"multiexp_separate_t{t}", s["separate"], anchor=ANCHOR_MULTIEXP["separate"].get(t),
                       note=f"{t} gmpy2.powmod"))
        report.add(pure_row)
        if compiled is not None:
            nat = report.add(_ms(f"multiexp_native_t{t}", s["native"], anchor=ANCHOR_MULTIEXP["native"].get(t),
                                 note="Cython Straus, Montgomery on mpn"))
            report.add(ratio_row(f"multiexp_native_speedup_t{t}", pure_row, nat, goal=">= 1.4",
                                 note="best pure / compiled"))


def _rootfactor(report: Report, ns: list[int], rounds: int) -> None:
    for n in ns:
        a = _chain(n)
        xs = a.elements
        total = batch.product(xs)
        sample = [0, n // 2, n - 1][: 3 if n >= 3 else n]
        group = acc.RSA2048

        def naive_sample():
            for i in sample:
                group.pow(group.generator, total // xs[i])

        s = interleave({"fast": lambda: acc.root_factor(xs), "naive": naive_sample}, rounds=rounds, per_round=1,
                       warmup=0)
        scale = n / len(sample)
        naive = Samples([w * scale for w in s["naive"].wall], [c * scale for c in s["naive"].cpu])
        fast = report.add(_ms(f"rootfactor_n{n}", s["fast"], note="all n witnesses, recursive halving"))
        slow = report.add(_ms(f"rootfactor_naive_n{n}", naive,
                              note=f"n separate witnesses (timed on {len(sample)}, scaled by n/{len(sample)})"))
        report.add(ratio_row(f"rootfactor_speedup_n{n}", slow, fast, goal=">= 20" if n == 1024 else None,
                             note="naive / RootFactor"))


async def _setup(report: Report, bits: int) -> None:
    from edgefl.crypto.accumulator import distributed

    t0, c0 = time.perf_counter(), time.process_time()
    result = await distributed.generate_local(3, bits)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    report.add(Row(f"distributed_setup_{bits}_k3", "ms", wall * 1e3, wall * 1e3, cpu * 1e3,
                   note=f"one run, {result.stats.candidates} candidates, {result.stats.rounds} rounds"))


async def run(*, quick: bool = False, sizes: str = "8,32,128", rootfactor: str = "256,1024", chain: int = 256,
              setup_bits: int = 0, seed: int = 1, **_) -> Report:
    random.seed(seed)
    ts = [int(t) for t in sizes.split(",") if t]
    ns = [int(n) for n in rootfactor.split(",") if n]
    rounds = 4 if quick else 25
    if quick:
        ns = [n for n in ns if n <= 256] or [64]
    report = Report("edgefl bench accumulator (RSA-2048, 256-bit representatives)")
    a = _chain(max(ts + [chain]))
    ws = a.witnesses()
    _single_ops(report, a, ws, rounds)
    _batch(report, a, ws, ts, rounds)
    _multiexp(report, ts, rounds)
    _rootfactor(report, ns, 2 if quick else 3)
    if setup_bits:
        await _setup(report, setup_bits)
    return report
