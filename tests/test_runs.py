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


def test_fingerprints_of_two_versions_or_none_cannot_be_compared_and_count_as_the_same():
    assert runs.same_data("v2:ab", "v2:ab") and not runs.same_data("v2:ab", "v2:cd")
    assert runs.same_data("3e6e79b4c3d60b70", "v2:cd") and runs.same_data(None, "v2:cd")
    assert not runs.same_data("3e6e79b4c3d60b70", "0000000000000000")
    had, now = ({"model": {}, "train": {}, "data": {"data_path": p, "fingerprint": "v2:ab"}} for p in ("/a", "/b"))
    assert runs.differences(had, now) == [] and runs.differences(had, now, where=True) == [
        "data.data_path: '/a' there, '/b' here"]


def test_a_folder_without_record_json_takes_the_record_its_seeds_share_or_is_refused(tmp_path):
    def seed(n, lr):
        (tmp_path / f"seed_{n}").mkdir()
        metrics = {k: 0.5 for k in runs.METRICS}
        runs.write_json(str(tmp_path / f"seed_{n}" / "result.json"), {"valid": metrics, "test": metrics, "config": {
            "model": {}, "train": {"lr": lr}, "data": {"data_path": f"/moved{n}", "fingerprint": "v2:ab"}}})
    assert runs.folder_record(str(tmp_path), {}) is None
    seed(1, 0.001)
    seed(2, 0.001)                   # the same data read from another path: one record
    assert runs.folder_record(str(tmp_path), runs.finished_seeds(str(tmp_path)))["train"] == {"lr": 0.001}
    seed(3, 0.01)
    with pytest.raises(runs.DataError, match=r"seeds \[3\] ran another configuration.*train.lr: 0.001 there, 0.01"):
        runs.folder_record(str(tmp_path), runs.finished_seeds(str(tmp_path)))
