"""
compare.py -- did the idea help? The field's tables, and run folders compared seed by seed.

Seeds move MOSI-sized results more than most ideas do, so one mean against another says little. Two
folders are compared *paired* over their shared seeds: Δ = fork − base of each seed's MAE, then the
mean of Δ, its standard error and on how many seeds the fork is better. Valid decides (`DECISION`),
test reports: `python train.py --compare BASE FORK ...`.
"""
import math
import os

import numpy as np

from data import DataError
from runs import METRICS, RESULT, differences, finished_seeds, folder_record, metric

TABLE = [("Acc-2 has-0/non-0", ("acc2_has0", "acc2_non0")), ("F1 has-0/non-0", ("f1_has0", "f1_non0")),
         ("Acc-5", ("acc5",)), ("Acc-7", ("acc7",)), ("MAE", ("mae",)), ("Corr", ("corr",))]


def format_cells(mean, std=None):
    """The field's columns: accuracies and F1 in %, MAE and Corr as fractions; null (undefined) as nan."""
    cells = []
    for _, keys in TABLE:
        scale, fmt = (1, "{:.3f}") if keys[0] in ("mae", "corr") else (100, "{:.2f}")
        show = lambda v: fmt.format((math.nan if v is None else v) * scale)
        cells.append(" / ".join(show(mean[k]) + (f"±{show(std[k])}" if std is not None else "") for k in keys))
    return cells


def print_columns(rows):
    """Rows of cells, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def print_table(title, mean, std=None):
    print(f"\n{title}")
    print_columns([[name for name, _ in TABLE], format_cells(mean, std)])


def paired(base, other):
    """other - base, paired seed by seed, of a lower-is-better metric ({seed: value} each): over the
    seeds both have, the mean difference Δ, its standard error (std of Δ with ddof=1, over √n; NaN
    for one seed) and on how many seeds `other` is strictly lower (better) and strictly higher."""
    seeds = sorted(set(base) & set(other))
    delta = np.array([other[s] - base[s] for s in seeds], dtype=float)
    n = len(seeds)
    return {"seeds": seeds, "n": n, "mean": float(delta.mean()) if n else math.nan,
            "se": float(delta.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "better": int((delta < 0).sum()), "worse": int((delta > 0).sum())}


MIN_SEEDS = 3      # fewer shared seeds than this: too few to say
DECISION = ("decide on valid MAE: |Δ| > 2 SE and most shared seeds agree: better or worse; otherwise a tie; "
            f"fewer than {MIN_SEEDS} shared seeds: too few to say. Valid also picked each seed's best epoch, which "
            "flatters noisier runs; test reports, it does not decide")


def verdict(p):
    """The decision rule (DECISION) applied to a `paired` result on valid MAE."""
    if p["n"] < MIN_SEEDS:
        return "too few seeds"
    side, agree = ("better", p["better"]) if p["mean"] < 0 else ("worse", p["worse"])   # the mean's side
    return side if abs(p["mean"]) > 2 * p["se"] and agree > p["n"] / 2 else "tie"       # NaN: a tie


def compare_runs(paths):
    """Each run folder's test mean ± std; then against the first folder: how their records differ (flags,
    data, torch and device), and paired over their shared seeds the Δ MAE ± SE on valid (which decides,
    by DECISION) and on test (which reports). Returns one dict per folder."""
    rows = []
    for path in paths:
        seeds = finished_seeds(path)
        if not seeds:
            raise DataError(f"no finished seed in {path} (seed_<N>/{RESULT}); pass the --out folder of a run")
        test = {k: list(metric(seeds, "test", k).values()) for k in METRICS}
        rows.append({"name": os.path.basename(os.path.normpath(path)), "seeds": seeds,
                     "record": folder_record(path, seeds), "mean": {k: np.mean(v) for k, v in test.items()},
                     "std": {k: np.std(v) for k, v in test.items()},
                     "ran on": sorted({f"torch {r.get('torch')} on {r.get('device')}" for r in seeds.values()})})
    first, se = rows[0], lambda p: "n/a" if math.isnan(p["se"]) else f"{p['se']:.3f}"
    print_columns([["run", "seeds", *[name for name, _ in TABLE]]] +
                  [[r["name"], str(len(r["seeds"])), *format_cells(r["mean"], r["std"])] for r in rows])
    table = [[f"vs {first['name']}", "shared seeds", "Δ valid MAE ± SE", "better", "Δ test MAE ± SE", "better",
              "verdict"]]
    for r in rows[1:]:
        r["differences"] = differences(first["record"], r["record"], where=True) + (
            [f"ran on: {first['ran on']} there, {r['ran on']} here"] if r["ran on"] != first["ran on"] else [])
        r.update({part: paired(metric(first["seeds"], part, "mae"), metric(r["seeds"], part, "mae"))
                  for part in ("valid", "test")})
        r["verdict"] = verdict(r["valid"])
        cells = [(f"{p['mean']:+.3f} ± {se(p)}", f"{p['better']} of {p['n']}") for p in (r["valid"], r["test"])]
        table.append([r["name"], " ".join(map(str, r["valid"]["seeds"])) or "none", *cells[0], *cells[1], r["verdict"]])
    if len(rows) > 1:
        print()
        print_columns(table)
        for r in rows[1:]:
            differ = "; ".join(r["differences"]) or "no difference in their records"
            print(f"{r['name']} differs from {first['name']}: {differ}")
        print(f"Δ = folder − {first['name']}, lower is better. Rule: {DECISION}.")
    return rows
