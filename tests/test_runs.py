"""runs.py: run records, result files and atomic writes, without training (train.py's tests run them end to end)."""
import json
import math

import pytest
import torch

import runs


def test_differences_name_each_changed_field_and_ignore_where_the_data_lies():
    had = {"model": {"d_model": 64, "tau": 0.1}, "train": {"lr": 0.001}, "data": {"data_path": "/a/x.pkl", "fingerprint": "f1"}}
    moved = {**had, "data": {"data_path": "/b/x.pkl", "fingerprint": "f1"}}
    assert runs.differences(had, moved) == []                   # the same file, elsewhere
    other = {"model": {"d_model": 32, "tau": 0.1}, "train": {"lr": 0.01}, "data": {"data_path": "/a/x.pkl", "fingerprint": "f2"}}
    assert runs.differences(had, other) == ["model.d_model: 64 there, 32 here", "train.lr: 0.001 there, 0.01 here",
                                            "data.fingerprint: 'f1' there, 'f2' here"]
    assert runs.differences({"model": {}}, moved)[0] == "model.d_model: '(missing)' there, 64 here"


def test_write_json_writes_nan_as_null_and_says_where(tmp_path, capsys):
    runs.write_json(str(tmp_path / "r.json"), {"test": {"corr": math.nan, "mae": 0.5}, "seed": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"test": {"corr": None, "mae": 0.5}, "seed": 1}
    err = capsys.readouterr().err
    assert "1 undefined metric(s) (NaN) written as null" in err and "test.corr" in err
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]       # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "best.pt"
    runs.save_checkpoint(str(path), model={"w": torch.ones(2)})

    def half_then_fail(tmp):
        open(tmp, "wb").write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    with pytest.raises(runs.Stopped, match="No space left on device.*is the disk full") as stop:
        runs.written(str(path), half_then_fail)
    assert stop.value.code == 1 and [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert torch.equal(runs.load_checkpoint(str(path), keys={"model"})["model"]["w"], torch.ones(2))


def test_summarise_averages_the_seed_folders(tmp_path):
    for seed, mae in ((1, 0.4), (2, 0.6)):
        metrics = {k: 0.5 for k in runs.METRICS}
        runs.write_json(str(tmp_path / f"seed_{seed}.json"), {})     # stray files are not seeds
        (tmp_path / f"seed_{seed}").mkdir()
        runs.write_json(str(tmp_path / f"seed_{seed}" / "result.json"),
                        {"valid": metrics, "test": {**metrics, "mae": mae}, "config": {"model": {}, "train": {}}})
    summary = runs.summarise(str(tmp_path))
    assert sorted(summary["seeds"]) == ["1", "2"] and summary["test_mean"]["mae"] == pytest.approx(0.5)
    assert summary["test_std"]["mae"] == pytest.approx(0.1)
    assert json.loads((tmp_path / "results.json").read_text()) == summary
