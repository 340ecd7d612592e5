"""The experiments by name: each a grid of ``Setting``s, its tables, its plots; the goals they are held to.

=============  =================================================================================
devices        accuracy and loss per round vs the number of devices (5, 10, 20, 50), IID, FedAvg
epochs         … vs local epochs (1, 2, 5), 20 devices
partition      … IID vs non-IID: Dirichlet α = 0.5 and 0.1, label shards (2 per device)
aggregators    every aggregator, random selection included, without attackers, IID and α = 0.1
attacks        each attack at 10/20/30/40 % malicious under each aggregator (IID), with the
               reputation curves of honest and attacking devices; the clean rows beside them
noniid         α = 0.1 with 25 % Gaussian byzantine devices under each aggregator
privacy        the crowdsourcing design's Fig. 3: accuracy vs ε with its normalisation and with
               Jiang et al.'s batch normalisation, at the same ε and noise scale, and without DP
extractor      the ε sweep with the random extractor beside ones trained by the requester
               (``edgefl model train``) on generated digits and on its own MNIST images
all            every one of them (settings they share run once)
=============  =================================================================================

The learning experiments (devices … noniid) train the networked default
dense model (3920-100-30-20-10) from He initialisation with Adam (lr 10⁻³),
no warm start and no FedProx — classic FedAvg-style rounds, as the demo runs
under attack — without DP, so they isolate what the aggregators do.  The
privacy experiments use the fog's method and model of ``edgefl bench ml``
(ridge warm start, mean of the releases, FedProx, 3920-600-100-30-20-10,
10 devices, 2 rounds of 3 epochs) so they sit beside its 84.7 % at ε = 1.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from edgefl.experiments.lab import CLIP_NORM, Lab, Progress, Setting, defender_f

AGGREGATORS = ["fedavg", "random", "krum", "multikrum", "trimmedmean", "median", "bulyan", "geomedian", "fltrust",
               "clip"]
ROBUST = [a for a in AGGREGATORS if a not in ("fedavg", "random")]
ATTACKS = ["labelflip", "labelreverse", "randomlabels", "noisy", "backdoor", "signflip", "scaling", "gaussian", "alie", "fang-krum",
           "fang-trimmedmean", "backdoor+scaling"]
PARTITIONS = ["iid", "dirichlet-0.5", "dirichlet-0.1", "shards-2"]
NORMALISERS = {"minmax": "the design's normalisation", "batchnorm": "Jiang et al.'s batch normalisation"}
PRIVACY_HIDDEN = (600, 100, 30, 20)


@dataclass(frozen=True)
class Scale:
    """How big a run is: the full one on MNIST, or ``--quick``."""

    train: int
    test: int
    rounds: int
    epochs: int
    devices: tuple[int, ...]
    epochs_grid: tuple[int, ...]
    fractions: tuple[float, ...]
    epsilons: tuple[float, ...]
    seeds: int
    privacy_epochs: int
    generated: int  # generated digits the requester trains an extractor on
    own: int  # its own labelled images (the first of the training portion)
    extractor_epochs: int
    aggregators: tuple[str, ...] = tuple(AGGREGATORS)
    attacks: tuple[str, ...] = tuple(ATTACKS)


FULL = Scale(train=8000, test=2000, rounds=5, epochs=2, devices=(5, 10, 20, 50), epochs_grid=(1, 2, 5),
             fractions=(0.1, 0.2, 0.3, 0.4), epsilons=(1.0, 2.0, 5.0, 10.0), seeds=3, privacy_epochs=3,
             generated=5000, own=1000, extractor_epochs=5)
QUICK = Scale(train=2000, test=500, rounds=3, epochs=1, devices=(5, 10, 20), epochs_grid=(1, 2),
              fractions=(0.3,), epsilons=(1.0, 10.0), seeds=1, privacy_epochs=2, generated=1000, own=500,
              extractor_epochs=2,
              aggregators=("fedavg", "random", "krum", "multikrum", "trimmedmean", "median", "geomedian", "fltrust"),
              attacks=("labelreverse", "backdoor", "signflip", "scaling", "gaussian", "alie", "fang-krum"))
BASE_DEVICES = 20


def _base(sc: Scale, experiment: str, **kw) -> Setting:
    return Setting(experiment, **{"devices": BASE_DEVICES, "rounds": sc.rounds, "epochs": sc.epochs, **kw})


def _privacy(sc: Scale, experiment: str, **kw) -> Setting:
    return Setting(experiment, devices=10, rounds=2, epochs=sc.privacy_epochs, method="fog", hidden=PRIVACY_HIDDEN,
                   **kw)


def grid(name: str, sc: Scale) -> list[Setting]:
    """The settings of one experiment (not ``all``), in the order they run (grouped by attack)."""
    if name == "devices":
        return [_base(sc, name, devices=n) for n in sc.devices]
    if name == "epochs":
        return [_base(sc, name, epochs=e) for e in sc.epochs_grid]
    if name == "partition":
        return [_base(sc, name, partition=p) for p in PARTITIONS]
    if name == "aggregators":
        return [_base(sc, name, partition=p, aggregator=a) for p in ("iid", "dirichlet-0.1") for a in sc.aggregators]
    if name == "attacks":
        return ([_base(sc, name, aggregator=a) for a in sc.aggregators]
                + [_base(sc, name, aggregator=a, attack=x, malicious=m)
                   for x in sc.attacks for m in sc.fractions for a in sc.aggregators])
    if name == "noniid":
        return [_base(sc, name, partition="dirichlet-0.1", aggregator=a, attack=x, malicious=m)
                for x, m in (("none", 0.0), ("gaussian", 0.25)) for a in sc.aggregators]
    if name == "privacy":
        return [_privacy(sc, name, epsilon=e, normaliser=nm, seed=seed)
                for nm in NORMALISERS for e in (*sc.epsilons, None) for seed in range(sc.seeds)]
    if name == "extractor":
        return [_privacy(sc, name, epsilon=e, extractor=x, seed=seed)
                for x in EXTRACTORS for e in (*sc.epsilons, None) for seed in range(sc.seeds)]
    raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")


EXPERIMENTS = ["devices", "epochs", "partition", "aggregators", "attacks", "noniid", "privacy", "extractor"]
EXTRACTORS = {"random": "random (seeded Glorot, today's release)", "generated": "trained on generated digits",
              "own": "trained on the requester's own images (first of the training portion)"}


def extractor_makers(train, sc: Scale, seed: int = 0, log: Callable[[str], None] = print):
    """The trained extractors, built when first used (``edgefl model train``'s function): on generated digits,
    and on the first ``sc.own`` images of the training portion ``train`` (never a test image)."""
    from edgefl.ml.data import synthetic_digits
    from edgefl.ml.pretrain import train_extractor

    info: dict[str, dict] = {}

    def trained(key: str, images, labels, source: str):
        def make():
            log(f"training the {key} extractor on {len(labels)} {source} ({sc.extractor_epochs} epochs)")
            w, h = train_extractor(images, labels, epochs=sc.extractor_epochs, seed=seed, version=2)
            info[key] = {"source": source, "items": len(labels), "epochs": sc.extractor_epochs,
                         "loss": h.loss, "accuracy": h.accuracy, "weights": w.digest().hex()}
            return w
        return make

    gen = synthetic_digits(sc.generated, seed=1)
    own = train.subset(slice(0, min(sc.own, len(train))))
    return {"generated": trained("generated", gen.images, gen.labels, "generated digits"),
            "own": trained("own", own.images, own.labels, "images of the training portion")}, info


# --------------------------------------------------------------------------- running


def run_all(lab: Lab, settings: list[Setting], log: Callable[[str], None] = print,
            journal: Path | None = None, resume: bool = False) -> list[dict]:
    """Run every setting once (equal ones in different experiments share the run), with a progress bar.

    Each finished row is appended to ``journal`` (JSON lines, after a header naming the data); with
    ``resume`` the rows already there for the same data are taken instead of run again.
    """
    def key(s: Setting) -> str:
        return json.dumps(asdict(replace(s, experiment="")), sort_keys=True, default=list)

    header = {"journal": 1, "source": lab.source, "train": len(lab.train), "test": len(lab.test)}
    done: dict[str, dict] = {}
    if journal is not None and resume and journal.exists():
        lines = journal.read_text().splitlines()
        if lines and json.loads(lines[0]) == header:
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a crash: run that setting again
                    continue
                done[row.pop("_key")] = row
            log(f"resuming: {len(done)} rows from {journal}")
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        with journal.open("w") as f:
            f.write(json.dumps(header) + "\n" + "".join(json.dumps({**r, "_key": k}, default=float) + "\n"
                                                       for k, r in done.items()))
    todo = {key(s): s for s in settings if key(s) not in done}
    lab.progress = Progress(sum(s.rounds for s in todo.values()))
    rows = []
    try:
        for s in settings:
            k = key(s)
            if k not in done:
                try:
                    done[k] = lab.run(s)
                except Exception as exc:  # one broken setting does not lose the others' hours
                    log(f"{s.label()}: {type(exc).__name__}: {exc}")
                    done[k] = {**asdict(s), "label": s.label(), "error": f"{type(exc).__name__}: {exc}"}
                if journal is not None:
                    with journal.open("a") as f:
                        f.write(json.dumps({**done[k], "_key": k}, default=float) + "\n")
            rows.append({**done[k], "experiment": s.experiment})
    finally:
        lab.progress.close()
    return rows


# --------------------------------------------------------------------------- tables


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return statistics.mean(vals) if vals else None


def _pick(rows, **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _one(rows, **match) -> dict | None:
    found = _pick(rows, **match)
    return found[0] if found else None


def _acc_cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r.get("error"):
        return "n/a"
    cell = _pct(r["final"])
    if r.get("asr") is not None:
        cell += f" / {_pct(r['asr'][-1])}"
    return cell


def _curve_table(rows: list[dict], key: str, head: str, fmt=str) -> list[str]:
    rounds = max(r["rounds"] for r in rows)
    out = [f"| {head} | items per device | " + " | ".join(f"round {i + 1}" for i in range(rounds))
           + " | test loss | seconds |", "|---" * (rounds + 4) + "|"]
    for r in rows:
        items = f"{min(r['items'])}–{max(r['items'])}" if min(r["items"]) != max(r["items"]) else str(r["items"][0])
        out.append(f"| {fmt(r[key])} | {items} | " + " | ".join(_pct(a) for a in r["accuracy"])
                   + f" | {r['loss'][-1]:.3f} | {r['seconds']:.0f} |")
    return out


def table(name: str, rows: list[dict], sc: Scale) -> list[str]:
    rows = _pick(rows, experiment=name)
    if not rows:
        return []
    if name == "devices":
        return ["Test accuracy (%) after each round, IID, FedAvg:", ""] + _curve_table(rows, "devices", "devices")
    if name == "epochs":
        return ["Test accuracy (%) after each round, 20 devices, IID, FedAvg:", ""] + _curve_table(
            rows, "epochs", "local epochs")
    if name == "partition":
        return ["Test accuracy (%) after each round, 20 devices, FedAvg:", ""] + _curve_table(
            rows, "partition", "partition")
    if name == "aggregators":
        out = ["Final test accuracy (%) and test loss without attackers (20 devices; f-based aggregators told "
               f"f = {defender_f(BASE_DEVICES, 0)}):", "",
               "| aggregator | options | IID | IID loss | Dirichlet α = 0.1 | α = 0.1 loss |", "|---|---|---|---|---|---|"]
        for a in sc.aggregators:
            iid, skew = _one(rows, aggregator=a, partition="iid"), _one(rows, aggregator=a, partition="dirichlet-0.1")
            opts = ", ".join((iid or skew or {}).get("aggregator_options", []))
            out.append(f"| {a} | {opts} | {_acc_cell(iid)} | {_loss(iid)} | {_acc_cell(skew)} | {_loss(skew)} |")
        return out
    if name == "attacks":
        return _attack_tables(rows, sc)
    if name == "noniid":
        out = ["Dirichlet α = 0.1, 20 devices: final test accuracy (%) without attackers and with 25 % (5) "
               "Gaussian byzantine devices:", "", "| aggregator | clean | 25 % Gaussian | attackers' share of the "
               "last aggregate |", "|---|---|---|---|"]
        for a in sc.aggregators:
            clean, hit = _one(rows, aggregator=a, attack="none"), _one(rows, aggregator=a, attack="gaussian")
            share = "" if not hit or hit.get("error") else f"{hit['attacker_share'][-1]:.2f}"
            out.append(f"| {a} | {_acc_cell(clean)} | {_acc_cell(hit)} | {share} |")
        return out
    if name == "privacy":
        out = [f"Test accuracy (%) after round 2 (round 1 in brackets), 10 devices, batch 64, mean of {sc.seeds} "
               "seed(s), worst seed after the slash:", "",
               "| ε per round | " + " | ".join(NORMALISERS.values()) + " |", "|---|---|---|"]
        for e in (*sc.epsilons, None):
            cells = [_seeds_cell(_pick(rows, epsilon=e, normaliser=nm)) for nm in NORMALISERS]
            out.append(f"| {'no DP' if e is None else f'{e:g}'} | " + " | ".join(cells) + " |")
        return out
    if name == "extractor":
        out = [f"Test accuracy (%) after round 2 (round 1 in brackets), the design's normalisation, mean of "
               f"{sc.seeds} seed(s), worst seed after the slash:", "",
               "| ε per round | " + " | ".join(EXTRACTORS.values()) + " |", "|---|---|---|---|"]
        for e in (*sc.epsilons, None):
            cells = [_seeds_cell(_pick(rows, epsilon=e, extractor=x)) for x in EXTRACTORS]
            out.append(f"| {'no DP' if e is None else f'{e:g}'} | " + " | ".join(cells) + " |")
        return out
    return []


def _loss(r) -> str:
    return "" if r is None or r.get("error") else f"{r['loss'][-1]:.3f}"


def _seeds_cell(rows: list[dict]) -> str:
    rows = [r for r in rows if not r.get("error")]
    if not rows:
        return ""
    last = [r["accuracy"][-1] for r in rows]
    first = [r["accuracy"][0] for r in rows]
    return f"{_pct(statistics.mean(last))} ({_pct(statistics.mean(first))}) / {_pct(min(last))}"


def _attack_tables(rows: list[dict], sc: Scale) -> list[str]:
    aggs = list(sc.aggregators)
    head = "| attack | " + " | ".join(aggs) + " |"
    sep = "|---" * (len(aggs) + 1) + "|"
    clean = {a: _one(rows, aggregator=a, attack="none") for a in aggs}
    out = []
    for m in sc.fractions:
        k = round(m * BASE_DEVICES)
        out += [f"**{100 * m:g} % malicious** ({k} of {BASE_DEVICES} devices): final test accuracy (%), "
                "backdoor rows: accuracy / attack success rate (%); n/a: the aggregator's condition on n and f "
                "fails:", "", head, sep, "| none (clean) | " + " | ".join(_acc_cell(clean[a]) for a in aggs) + " |"]
        for x in sc.attacks:
            out.append(f"| {x} | " + " | ".join(_acc_cell(_one(rows, aggregator=a, attack=x, malicious=m))
                                                for a in aggs) + " |")
        out.append("")
    m = 0.3 if 0.3 in sc.fractions else sc.fractions[-1]
    out += [f"Reputation after round {min(3, sc.rounds)} at {100 * m:g} % (honest devices' mean / attackers' mean, "
            f"from 0.5; ✓: honest rose above 0.5 and attackers fell below):", "", head, sep]
    for x in sc.attacks:
        cells = []
        for a in aggs:
            r = _one(rows, aggregator=a, attack=x, malicious=m)
            if r is None or r.get("error"):
                cells.append("n/a" if r else "")
                continue
            at = min(3, r["rounds"]) - 1
            cells.append(f"{r['reputation']['honest'][at]:.2f} / {r['reputation']['attackers'][at]:.2f}"
                         + (" ✓" if r.get("reputation_separates") else ""))
        out.append(f"| {x} | " + " | ".join(cells) + " |")
    attacked = [r for r in rows if r["attack"] != "none" and not r.get("error")]
    if attacked:
        sep_by = {a: sum(bool(r.get("reputation_separates")) for r in attacked if r["aggregator"] == a) for a in aggs}
        n_by = {a: sum(1 for r in attacked if r["aggregator"] == a) for a in aggs}
        out += ["", f"Attack rows (every fraction) where the reputation separates within {min(3, sc.rounds)} rounds, "
                "by aggregator: "
                + ", ".join(f"{a} {sep_by[a]}/{n_by[a]}" for a in aggs if n_by[a]) + "."]
    return out


# --------------------------------------------------------------------------- goals and anchors


def goals(rows: list[dict], sc: Scale) -> list[dict]:
    """The issue's goals, measured from the attack and non-IID rows (those present)."""
    out = []
    att = _pick(rows, experiment="attacks")
    clean = _one(att, aggregator="fedavg", attack="none")
    m = 0.3
    if clean and any(r["malicious"] == m for r in att):
        base = clean["final"]
        for x in ("labelflip", "labelreverse", "signflip", "scaling", "gaussian"):
            hit = [r for r in _pick(att, attack=x, malicious=m) if not r.get("error")]
            fed = _one(hit, aggregator="fedavg")
            robust = [r for r in hit if r["aggregator"] in ROBUST]
            if not robust or fed is None:
                continue
            best = max(robust, key=lambda r: r["final"])
            out.append({"goal": f"{x}, 30 %: best robust aggregator within 2 points of clean FedAvg",
                        "target": f">= {100 * (base - 0.02):.1f} %", "measured": f"{100 * best['final']:.1f} % "
                        f"({best['aggregator']})", "met": best["final"] >= base - 0.02})
            out.append({"goal": f"{x}, 30 %: FedAvg loses at least 10 points", "target": f"<= {100 * (base - 0.1):.1f} %",
                        "measured": f"{100 * fed['final']:.1f} %", "met": fed["final"] <= base - 0.1})
        bd = [r for r in _pick(att, attack="backdoor", malicious=m) if not r.get("error") and r["aggregator"] in ROBUST]
        if bd:
            ok = [r for r in bd if r["final"] >= base - 0.02]
            best = min(ok or bd, key=lambda r: (r["asr"][-1], -r["final"]))
            out.append({"goal": "backdoor, 30 %: attack success <= 3 % with main accuracy down <= 2 points",
                        "target": f"ASR <= 3 %, accuracy >= {100 * (base - 0.02):.1f} %",
                        "measured": f"ASR {100 * best['asr'][-1]:.1f} %, accuracy {100 * best['final']:.1f} % "
                                    f"({best['aggregator']})",
                        "met": best["asr"][-1] <= 0.03 and best["final"] >= base - 0.02})
    non = [r for r in _pick(rows, experiment="noniid", attack="gaussian") if not r.get("error")]
    if non:
        best = max(non, key=lambda r: r["final"])
        out.append({"goal": "Dirichlet α = 0.1, 25 % byzantine (Gaussian): best aggregator >= 80 %", "target": ">= 80 %",
                    "measured": f"{100 * best['final']:.1f} % ({best['aggregator']})", "met": best["final"] >= 0.8})
    attacked = [r for r in rows if r["experiment"] in ("attacks", "noniid") and r["attack"] != "none"
                and not r.get("error")]
    if attacked:
        good = sum(bool(r.get("reputation_separates")) for r in attacked)
        best = max(ROBUST, key=lambda a: sum(bool(r.get("reputation_separates")) for r in attacked
                                             if r["aggregator"] == a))
        n_best = [r for r in attacked if r["aggregator"] == best]
        out.append({"goal": "every attack row: honest reputation rises and attackers' falls within 3 rounds",
                    "target": f"{len(attacked)} of {len(attacked)} rows",
                    "measured": f"{good} of {len(attacked)} rows ({best}: "
                                f"{sum(bool(r.get('reputation_separates')) for r in n_best)} of {len(n_best)})",
                    "met": good == len(attacked)})
    return out


def anchors(rows: list[dict]) -> list[dict]:
    """The literature's figures beside the matching rows (when they ran)."""
    out = []
    att = _pick(rows, experiment="attacks")
    for agg, lit in (("krum", 0.90), ("fltrust", 0.05)):
        r = _one(att, attack="fang-krum", malicious=0.2, aggregator=agg)
        if r and not r.get("error"):
            out.append({"what": f"Krum-targeted attack (Fang et al.), 20 % malicious: {agg}'s test error",
                        "literature": f"~{lit:.2f}", "measured": f"{1 - r['final']:.2f}"})
    for m in (0.1, 0.3):
        r = _one(att, attack="backdoor+scaling", malicious=m, aggregator="fedavg")
        if r and not r.get("error"):
            out.append({"what": f"scaling backdoor vs FedAvg, {100 * m:g} % malicious: attack success",
                        "literature": "~100 %", "measured": f"{100 * r['asr'][-1]:.1f} %"})
    for agg, lit in (("fedavg", 0.52), ("multikrum", 0.79)):
        r = _one(rows, experiment="noniid", attack="gaussian", aggregator=agg)
        if r and not r.get("error"):
            out.append({"what": f"Dirichlet α = 0.1, Gaussian byzantine (25 %): {agg}'s accuracy",
                        "literature": f"{lit:.2f}", "measured": f"{r['final']:.2f}"})
    return out


# --------------------------------------------------------------------------- plots


def plot(name: str, rows: list[dict], sc: Scale, folder: Path) -> list[Path]:
    rows = _pick(rows, experiment=name)
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []

    def save(fig, stem: str) -> None:
        for ax in fig.axes:
            if ax.get_xlabel() == "round":
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        fig.tight_layout()
        out.append(folder / f"{stem}.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)

    if name in ("devices", "epochs", "partition"):
        key = {"devices": "devices", "epochs": "epochs", "partition": "partition"}[name]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for r in rows:
            xs = range(1, len(r["accuracy"]) + 1)
            ax1.plot(xs, [100 * a for a in r["accuracy"]], marker="o", label=f"{key} {r[key]}")
            ax2.plot(xs, r["loss"], marker="o", label=f"{key} {r[key]}")
        for ax, what in ((ax1, "test accuracy (%)"), (ax2, "test loss (cross-entropy)")):
            ax.set_xlabel("round")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Accuracy and loss vs {key} (MNIST, FedAvg)")
        save(fig, name)
    elif name in ("aggregators", "noniid"):
        groups = (("iid", "dirichlet-0.1"), "partition") if name == "aggregators" else (("none", "gaussian"), "attack")
        fig, ax = plt.subplots(figsize=(10, 3.8))
        width = 0.4
        for j, g in enumerate(groups[0]):
            vals = []
            for a in sc.aggregators:
                r = _one(rows, aggregator=a, **{groups[1]: g})
                vals.append(0 if r is None or r.get("error") else 100 * r["final"])
            ax.bar([i + (j - 0.5) * width for i in range(len(vals))], vals, width,
                   label={"iid": "IID", "dirichlet-0.1": "Dirichlet α = 0.1", "none": "clean",
                          "gaussian": "25 % Gaussian byzantine"}[g])
        ax.set_xticks(range(len(sc.aggregators)), sc.aggregators, rotation=20)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("Aggregators without attackers" if name == "aggregators" else
                     "Dirichlet α = 0.1 with 25 % Gaussian byzantine devices")
        save(fig, name)
    elif name == "attacks":
        attacks = list(sc.attacks)
        cols = 4
        fig, axes = plt.subplots(math.ceil(len(attacks) / cols), cols, figsize=(16, 3.2 * math.ceil(len(attacks) / cols)),
                                 squeeze=False)
        for ax, x in zip(axes.flat, attacks):
            for a in sc.aggregators:
                pts = [(0.0, _one(rows, aggregator=a, attack="none"))] + [
                    (m, _one(rows, aggregator=a, attack=x, malicious=m)) for m in sc.fractions]
                pts = [(100 * m, 100 * r["final"]) for m, r in pts if r and not r.get("error")]
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, label=a)
            ax.set_title(x, fontsize=10)
            ax.set_xlabel("malicious devices (%)")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(attacks):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7, ncol=2)
        fig.suptitle("Final test accuracy under each attack, per aggregator (20 devices, IID)")
        save(fig, "attacks")
        backdoors = [x for x in attacks if x.startswith("backdoor")]
        if backdoors:
            fig, axes = plt.subplots(1, len(backdoors), figsize=(6 * len(backdoors), 3.6), squeeze=False)
            for ax, x in zip(axes.flat, backdoors):
                for a in sc.aggregators:
                    pts = [(100 * m, 100 * r["asr"][-1]) for m in sc.fractions
                           if (r := _one(rows, aggregator=a, attack=x, malicious=m)) and not r.get("error")]
                    if pts:
                        ax.plot(*zip(*pts), marker="o", markersize=3, label=a)
                ax.set_title(f"{x}: attack success rate")
                ax.set_xlabel("malicious devices (%)")
                ax.set_ylabel("triggered test images → target (%)")
                ax.set_ylim(0, 100)
                ax.grid(alpha=0.3)
            axes.flat[0].legend(fontsize=7, ncol=2)
            save(fig, "backdoor")
        m = 0.3 if 0.3 in sc.fractions else sc.fractions[-1]
        fig, axes = plt.subplots(math.ceil(len(attacks) / cols), cols, figsize=(16, 3.2 * math.ceil(len(attacks) / cols)),
                                 squeeze=False)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, x in zip(axes.flat, attacks):
            for i, a in enumerate(sc.aggregators):
                r = _one(rows, aggregator=a, attack=x, malicious=m)
                if not r or r.get("error"):
                    continue
                xs = range(len(r["accuracy"]) + 1)
                c = colours[i % len(colours)]
                ax.plot(xs, [0.5] + r["reputation"]["honest"], "-", color=c, label=a)
                ax.plot(xs, [0.5] + r["reputation"]["attackers"], "--", color=c)
            ax.set_title(f"{x} ({100 * m:g} %)", fontsize=10)
            ax.set_xlabel("round")
            ax.set_ylabel("mean reputation")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(attacks):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7, ncol=2)
        fig.suptitle("Reputation per round: honest devices (solid) and attackers (dashed)")
        save(fig, "reputation")
    elif name in ("privacy", "extractor"):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        variants = NORMALISERS if name == "privacy" else EXTRACTORS
        key = "normaliser" if name == "privacy" else "extractor"
        for v, what in variants.items():
            ys = [_mean(r["accuracy"][-1] for r in _pick(rows, epsilon=e, **{key: v})) for e in sc.epsilons]
            line, = ax.plot(sc.epsilons, [100 * y if y is not None else float("nan") for y in ys], marker="o",
                            label=what)
            nodp = _mean(r["accuracy"][-1] for r in _pick(rows, epsilon=None, **{key: v}))
            if nodp is not None:
                ax.axhline(100 * nodp, color=line.get_color(), linestyle=":", label=f"{what}, no DP")
        ax.set_xlabel("ε per round")
        ax.set_ylabel("test accuracy after round 2 (%)")
        ax.set_title("Accuracy vs ε: normalisations (the design's Fig. 3)" if name == "privacy"
                     else "Accuracy vs ε: random and trained extractors")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, name)
    return out


# --------------------------------------------------------------------------- the report


def report(names: list[str], rows: list[dict], sc: Scale, folder: Path, meta: dict) -> tuple[str, dict]:
    """Markdown (tables, plots, goals) and the JSON document; the plots are written into ``folder``."""
    lines = [f"# edgefl experiment {meta['name']}", "",
             f"{meta['source']}: {sc.train} training images across the devices, {sc.test} test images; "
             f"{meta['scale']} run, {meta['seconds']:.0f} s. Reproduce with `{meta['command']}`.", ""]
    plots: dict[str, list[str]] = {}
    for name in names:
        body = table(name, rows, sc)
        if not body:
            continue
        lines += [f"## {name}", "", *body, ""]
        try:
            files = plot(name, rows, sc, folder)
        except ImportError as exc:
            lines += [f"(no plots: {exc}; install the `bench` extra)", ""]
            files = []
        plots[name] = [p.name for p in files]
        lines += [f"![{p.stem}]({p.name})" for p in files] + ([""] if files else [])
    g, an = goals(rows, sc), anchors(rows)
    if g:
        lines += ["## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
        lines += [f"| {x['goal']} | {x['target']} | {x['measured']} | {'met' if x['met'] else 'missed'} |" for x in g]
        lines.append("")
    if an:
        lines += ["## Beside the literature", "", "| what | literature | measured |", "|---|---|---|"]
        lines += [f"| {x['what']} | {x['literature']} | {x['measured']} |" for x in an]
        lines.append("")
    if meta.get("extractors"):
        lines += ["## Trained extractors", "", "| extractor | data | items | epochs | training accuracy by epoch (%) "
                  "| weights digest |", "|---|---|---|---|---|---|"]
        for key, i in meta["extractors"].items():
            lines.append(f"| {key} | {i['source']} | {i['items']} | {i['epochs']} | "
                         + ", ".join(f"{100 * a:.1f}" for a in i["accuracy"]) + f" | {i['weights'][:16]}… |")
        lines.append("")
    doc = {"meta": {**meta, "scale": meta["scale"], "clip_norm": CLIP_NORM}, "rows": rows, "goals": g,
           "anchors": an, "plots": plots}
    return "\n".join(lines), doc


def write(folder: Path, stem: str, markdown: str, doc: dict) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{stem}.md", folder / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return md, js
