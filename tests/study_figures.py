"""The simulation tables of state/METHODS.md ("Simulation figures"), for the default method and
each compatibility mode, from the studies that tests/test_realistic.py asserts on (same seeds):
rate, its Monte-Carlo standard error and the test's bound (claimed rate + 3 binomial SEs).
Prints; asserts nothing (the tests do). About two minutes.

Run: python -m tests.study_figures
"""

from __future__ import annotations

import math

import numpy as np

from state import EngineConfig
from tests.realistic import (Study, aa_rates, fdr, inconsistencies, last_widths, looks_to_detect, miss_rates,
                             run_study, signed_false_rejections, upper_tolerance)
from tests.test_realistic import AA, ALPHA, EFFECTS, POWER, RAMP

METHODS = ("fieller", "ses", "delta")


def se(rate: float, n: int) -> float:
    return math.sqrt(rate * (1.0 - rate) / n)


def cell(rate: float, n: int) -> str:
    return f"{rate:.4f} ({se(rate, n):.4f})"


def table(title: str, rows: dict, bound_of) -> None:
    """``rows``: name -> {method: (rate, n)}."""
    print(f"\n{title}\n\n| | " + " | ".join(METHODS) + " | bound |\n|---|" + "---|" * (len(METHODS) + 1))
    for name, by_method in rows.items():
        n = next(iter(by_method.values()))[1]
        print(f"| {name} | " + " | ".join(cell(*by_method[m]) for m in METHODS) + f" | {bound_of(n):.4f} |")


def direction_study(lift: float, seed: int) -> Study:
    """A 5% conversion at ``lift`` and a normal metric at 3/8 of it, on both treatments."""
    return Study(experiments=300, looks=60, seed=seed, shapes=("conversion5", "normal"), traffic=(300.0, 3000.0),
                 lifts={(shape, v): lift * (1.0 if shape == "conversion5" else 0.375)
                        for shape in ("conversion5", "normal") for v in ("t1", "t2")})


def power_rows(study: Study) -> dict:
    """Per shape and method: (median looks to detection, detected by the end, median last width)."""
    out = {}
    for method in ("fieller", "ses"):
        result = run_study(study, EngineConfig(variance_method=method))
        shapes = np.array([m for m, lift in zip(result.metrics, result.true_lift) if lift != 0])
        looks, widths = looks_to_detect(result), last_widths(result)
        for shape in dict.fromkeys(shapes):
            mask = shapes == shape
            out.setdefault(shape, {})[method] = (float(np.median(looks[:, mask])),
                                                 float(np.isfinite(looks[:, mask]).mean()),
                                                 float(np.median(widths[:, mask])))
    return out


def print_power(title: str, rows: dict) -> None:
    print(f"\n{title}\n\n| shape | median looks fieller / ses (ratio) | detected fieller / ses "
          "| last width fieller / ses (ratio) |\n|---|---|---|---|")
    for shape, r in rows.items():
        (lf, df, wf), (ls, ds, ws) = r["fieller"], r["ses"]
        print(f"| {shape} | {lf:.1f} / {ls:.1f} ({lf / ls:.2f}x) | {df:.3f} / {ds:.3f} | "
              f"{wf:.4f} / {ws:.4f} ({wf / ws:.2f}x) |")


def main() -> None:
    aa = {m: run_study(AA, EngineConfig(variance_method=m)) for m in METHODS}
    rates = {m: aa_rates(aa[m], ALPHA) for m in METHODS}
    table(f"A/A, {AA.experiments} experiments x {AA.looks} looks: P(always-valid p < alpha at any look) per "
          "hypothesis, and the experiments' P(any `rejected`)",
          {name: {m: rates[m][name] for m in METHODS} for name in rates["fieller"]},
          lambda n: upper_tolerance(ALPHA, n))
    signed = {m: signed_false_rejections(aa[m], ALPHA) for m in METHODS}
    n = next(iter(signed["fieller"].values()))[2]
    print("\nA/A, the same runs: first false rejection with a negative / positive lift estimate "
          f"(each side's bound {upper_tolerance(ALPHA / 2, n):.4f})\n\n| shape | " + " | ".join(METHODS)
          + " |\n|---|" + "---|" * len(METHODS))
    for shape in signed["fieller"]:
        print(f"| {shape} | " + " | ".join(f"{signed[m][shape][0]:.4f} / {signed[m][shape][1]:.4f}"
                                           for m in METHODS) + " |")

    effects = {m: run_study(EFFECTS, EngineConfig(variance_method=m)) for m in METHODS}
    misses = {m: miss_rates(effects[m]) for m in METHODS}
    rows = {shape: {m: misses[m][shape][:2] for m in METHODS} for shape in misses["fieller"]}
    fdrs = {m: fdr(effects[m]) for m in METHODS}  # (final, ever, experiments)
    for label, index in (("FDR, final `rejected`", 0), ("FDR, ever `rejected`", 1)):
        rows[label] = {m: (fdrs[m][index], fdrs[m][2]) for m in METHODS}
    table(f"True lifts on t1, t2 null, {EFFECTS.experiments} experiments x {EFFECTS.looks} looks: P(true lift "
          "ever outside the running CI), and FDR", rows, lambda n: upper_tolerance(ALPHA, n))

    ramp = {m: aa_rates(run_study(RAMP, EngineConfig(variance_method=m)), ALPHA) for m in METHODS}
    table(f"A/A with a 20:1 ramp-up, {RAMP.experiments} experiments x {RAMP.looks} looks",
          {name: {m: ramp[m][name] for m in METHODS} for name in ramp["fieller"]},
          lambda n: upper_tolerance(ALPHA, n))

    bad = {m: sum(e + d for study in (aa, effects) for e, d in inconsistencies(study[m]).values()) for m in METHODS}
    print(f"\nRows with lower > upper or a CI/p disagreement, A/A and effects studies: {bad}")

    print_power(f"Power against ses, the test's study ({POWER.experiments} experiments x {POWER.looks} looks, "
                "normal +-3%, 10% conversion +-10%)", power_rows(POWER))
    for lift in (0.08, -0.08):
        for seed in (1, 2):
            print_power(f"By direction: 5% conversion {lift:+.0%}, normal {0.375 * lift:+.0%}, seed {seed}",
                        power_rows(direction_study(lift, seed)))


if __name__ == "__main__":
    main()
