"""compare.py: the paired comparison of run folders, checked against numbers computed by hand."""
import json
import math

import pytest

import compare
import runs
from train import main


def write_seed(folder, seed, valid_mae, test_mae, lr=0.001, **test):
    """A minimal seed_<N>/result.json as train.py writes it."""
    (folder / f"seed_{seed}").mkdir(parents=True, exist_ok=True)
    metrics = {k: 0.5 for k in runs.METRICS}
    result = {"valid": {**metrics, "mae": valid_mae}, "test": {**metrics, "mae": test_mae, **test},
              "config": {"model": {}, "train": {"lr": lr}, "data": {}}}
    (folder / f"seed_{seed}" / "result.json").write_text(json.dumps(result))


def test_paired_gives_mean_difference_standard_error_and_wins_by_hand():
    base, other = {1: 0.50, 2: 0.60, 3: 0.70, 9: 0.1}, {1: 0.40, 2: 0.65, 3: 0.55, 4: 0.2}
    p = compare.paired(base, other)             # shared seeds 1, 2, 3: Δ = -0.10, +0.05, -0.15
    assert p["seeds"] == [1, 2, 3] and p["better"] == 2 and p["worse"] == 1
    assert p["mean"] == pytest.approx(-0.2 / 3)
    # std of Δ with ddof=1: deviations -1/30, 7/60, -1/12 -> variance (1/900 + 49/3600 + 1/144) / 2
    assert p["se"] == pytest.approx(math.sqrt((1 / 900 + 49 / 3600 + 1 / 144) / 2) / math.sqrt(3))
    assert math.isnan(compare.paired({1: 0.5}, {1: 0.4})["se"]) and compare.paired({1: 0.5}, {2: 0.4})["n"] == 0


@pytest.mark.parametrize("deltas, expected", [
    ([-0.10, -0.11, -0.09, -0.10], "better"), ([0.10, 0.11, 0.09], "worse"),
    ([-0.30, 0.01, 0.02, 0.03, -0.30], "tie"),     # the mean is lower, but most seeds are not: a tie
    ([-0.10, 0.12, -0.09], "tie"), ([-0.1, -0.1], "too few seeds")])
def test_verdict_follows_the_stated_rule(deltas, expected):
    base = {s: 1.0 for s in range(len(deltas))}
    assert compare.verdict(compare.paired(base, {s: 1.0 + d for s, d in enumerate(deltas)})) == expected


def test_compare_prints_differences_and_paired_deltas_on_valid_and_test(tmp_path, capsys):
    for seed, (v1, t1, v2, t2) in zip((1, 2, 3), [(0.4, 0.5, 0.3, 0.40), (0.5, 0.5, 0.3, 0.60), (0.6, 0.5, 0.6, 0.45)]):
        write_seed(tmp_path / "base", seed, v1, t1)
        write_seed(tmp_path / "other", seed, v2, t2, lr=0.01)
    write_seed(tmp_path / "base", 4, 0.4, 0.5)                  # not in other: left out of the pairing
    rows = compare.compare_runs([str(tmp_path / "base"), str(tmp_path / "other")])
    valid, test = rows[1]["valid"], rows[1]["test"]
    assert valid["seeds"] == test["seeds"] == [1, 2, 3] and valid["better"] == 2 and test["better"] == 2
    assert valid["mean"] == pytest.approx(-0.1) and test["mean"] == pytest.approx(-0.05 / 3)
    assert valid["se"] == pytest.approx(0.1 / math.sqrt(3))     # Δ valid -0.1, -0.2, 0: std 0.1
    assert rows[1]["differences"] == ["train.lr: 0.001 there, 0.01 here"] and rows[1]["verdict"] == "tie"
    printed = capsys.readouterr().out.splitlines()
    header = next(line for line in printed if line.startswith("vs base"))
    row = printed[printed.index(header) + 1]
    assert row.startswith("other ") and "| 1 2 3 " in row and "-0.100 ± 0.058" in row and "2 of 3" in row
    assert row.index("-0.100") == header.index("Δ valid MAE")      # aligned under its header
    assert "other differs from base: train.lr: 0.001 there, 0.01 here" in printed
    assert main(["--compare", str(tmp_path / "nothing")]) == 2
    assert "no finished seed in" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [lambda r: r["test"].update(mae="0.5"), lambda r: r["test"].update(mae=True),
                                    lambda r: r["test"].pop("corr"), lambda r: r.pop("config"), lambda r: []])
def test_compare_reports_a_damaged_result_file(tmp_path, capsys, damage):
    write_seed(tmp_path / "run", 1, 0.4, 0.5)
    path = tmp_path / "run" / "seed_1" / "result.json"
    result = json.loads(path.read_text())
    path.write_text(json.dumps(damage(result) if damage(result) == [] else result))
    assert main(["--compare", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is not a result.json written by train.py" in err and "Traceback" not in err


def test_compare_shows_an_undefined_metric_as_nan(tmp_path, capsys):
    write_seed(tmp_path / "run", 1, None, None, corr=None)
    assert main(["--compare", str(tmp_path / "run")]) == 0
    assert "| nan±nan | nan±nan" in capsys.readouterr().out
