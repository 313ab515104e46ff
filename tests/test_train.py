"""train.py: the field's metrics by hand, and the CLI end to end on a tiny synthetic set."""
import fcntl
import json
import math
import os

import numpy as np
import pytest
import torch

import data
import train
from miar import MIAR, MIARConfig
from test_data import mmsa_pickle
from train import compute_metrics, main

TINY = ["--dataset", "synthetic", "--synthetic-size", "tiny", "--d-model", "16", "--batch-size", "16"]


# ---------------------------------------------------------------- metrics

def test_acc7_and_acc5_round_half_to_even():
    m = compute_metrics([2.5, 0.5, -0.5, 1.5], [2.0, 0.0, 0.0, 2.0])
    assert m["acc7"] == 1.0          # half away from zero would give 3, 1, -1, 2: 0.25
    assert m["acc5"] == 1.0
    m = compute_metrics([3.7, -2.6], [3.0, -3.0])   # clipping to [-3, 3] before rounding
    assert m["acc7"] == 1.0 and m["acc5"] == 1.0


def test_has0_and_non0_treat_neutral_labels_as_documented():
    pred, label = [1.0, -1.0, 0.5, -0.2], [2.0, -1.0, 0.0, 0.0]
    m = compute_metrics(pred, label)
    assert m["acc2_has0"] == 0.75                    # label 0 counts as non-negative
    assert m["acc2_non0"] == 1.0                     # label 0 is dropped
    # class "non-negative": tp 2, fp 0, fn 1 -> F1 0.8 (support 3); "negative": tp 1, fp 1 -> 2/3 (support 1)
    assert math.isclose(m["f1_has0"], (0.8 * 3 + 2 / 3) / 4)
    assert m["f1_non0"] == 1.0
    assert math.isclose(m["mae"], 1.7 / 4)
    p, y = np.array(pred), np.array(label)
    r = ((p - p.mean()) * (y - y.mean())).sum() / math.sqrt(((p - p.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert math.isclose(m["corr"], r)


def test_zero_prediction_is_negative_for_non0_and_non_negative_for_has0():
    m = compute_metrics([0.0, 0.0], [1.0, 1.0])
    assert m["acc2_non0"] == 0.0 and m["acc2_has0"] == 1.0


def test_f1_when_all_labels_are_one_class():
    m = compute_metrics([-1.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isclose(m["acc2_non0"], 2 / 3)
    assert math.isclose(m["f1_non0"], 0.8)           # the absent class has weight 0


def test_metrics_of_all_neutral_labels_and_constant_predictions_are_nan_not_errors():
    m = compute_metrics([0.1, 0.1], [0.0, 0.0])
    assert math.isnan(m["acc2_non0"]) and math.isnan(m["f1_non0"]) and math.isnan(m["corr"])


def test_metrics_reject_bad_input_clearly():
    with pytest.raises(ValueError, match="expected two equal, non-empty"):
        compute_metrics([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite predictions"):
        compute_metrics([np.nan], [1.0])


# ---------------------------------------------------------------- batches

@pytest.fixture(scope="module")
def tiny_unaligned():
    return data.load_dataset("synthetic", synthetic_size="tiny", unaligned=True, verbose=False)["train"]


def test_spans_count_frames_up_to_the_last_real_one(tiny_unaligned):
    t = tiny_unaligned.tensors
    expected = sum(t[f"{m}_mask"].sum(dim=1) for m in data.MODALITIES)   # right-padded: span == real frames
    assert torch.equal(train.spans(tiny_unaligned), expected)


def test_trim_padding_keeps_outputs_and_drops_only_common_trailing_padding(tiny_unaligned):
    full = tiny_unaligned[list(range(8))]
    trimmed = train.trim_padding(tiny_unaligned[list(range(8))])
    for m in data.MODALITIES:
        real = full[f"{m}_mask"].sum(dim=1)
        assert trimmed[m].shape[1] == int(real.max()) < full[m].shape[1]
        assert torch.equal(trimmed[f"{m}_mask"].sum(dim=1), real)
    model = MIAR(MIARConfig(text_dim=32, audio_dim=5, vision_dim=20, d_model=16)).eval()
    with torch.no_grad():
        a, b = model(**train.model_inputs(full, "cpu")), model(**train.model_inputs(trimmed, "cpu"))
    assert torch.allclose(a.pred, b.pred, atol=1e-5) and torch.allclose(a.weights, b.weights, atol=1e-6)
    # left padding (MulT): the last frames are real, nothing can be cut
    left = {k: v.flip(1) if k in data.MODALITIES or k.endswith("_mask") else v for k, v in full.items()}
    assert all(train.trim_padding(dict(left))[m].shape == left[m].shape for m in data.MODALITIES)


def test_training_batches_cover_the_split_once_grouped_by_length(tiny_unaligned):
    n, spans = len(tiny_unaligned), train.spans(tiny_unaligned)
    order = lambda seed: [b["id"] for b in train.batches(tiny_unaligned, 8, torch.Generator().manual_seed(seed))]
    first = order(0)
    assert sorted(i for ids in first for i in ids) == sorted(tiny_unaligned.ids) and len(first) == n // 8
    assert first == order(0) and first != order(1)        # seeded, and reshuffled by another seed
    # one window holds all 96 samples here, so the batches partition the length-sorted order
    index = {i: k for k, i in enumerate(tiny_unaligned.ids)}
    ranges = sorted((spans[[index[i] for i in ids]].min(), spans[[index[i] for i in ids]].max()) for ids in first)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))


def test_evaluation_batches_keep_the_split_order(tiny_unaligned):
    ids = [i for b in train.batches(tiny_unaligned, 10) for i in b["id"]]
    assert ids == list(tiny_unaligned.ids)


def test_model_inputs_zero_and_mask_a_dropped_modality_and_refuse_unknown_names(tiny_unaligned):
    batch = tiny_unaligned[[0, 1, 2]]
    inputs = train.model_inputs(batch, "cpu", drop=("audio",))
    assert not inputs["audio_mask"].any() and (inputs["audio"] == 0).all()
    assert torch.equal(inputs["vision"], batch["vision"]) and torch.equal(inputs["text_mask"], batch["text_mask"])
    with pytest.raises(ValueError, match=r"cannot drop \['a'\]"):
        train.model_inputs(batch, "cpu", drop=("a",))


def test_plot_run_writes_three_figures_and_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib
    before = matplotlib.get_backend()
    matplotlib.use("svg")                  # stands in for a notebook's inline backend
    try:
        history = [{"epoch": e, "train_loss": 1.0 / e, "train_l1": 0.9 / e, "valid_mae": 1.1 / e,
                    "valid_acc2_non0": 0.5 + 0.1 * e, "valid_acc7": 0.2} for e in (1, 2, 3)]
        rng = np.random.default_rng(0)
        train.plot_run(str(tmp_path), history, rng.normal(size=20), rng.normal(size=20), rng.dirichlet(np.ones(4), 20))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for name in ("learning_curves.png", "pred_vs_true.png", "token_weights.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name


# ---------------------------------------------------------------- CLI

def test_cli_smoke_run_writes_results_predictions_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parameters" in printed and "Acc-2 has-0/non-0" in printed
    results = json.loads((out / "results.json").read_text())
    seed = results["seeds"]["1111"]
    assert set(seed["test"]) == set(train.METRIC_NAMES) and set(seed["test_drop"]) == {"text", "audio", "vision"}
    assert results["test_mean"]["mae"] == seed["test"]["mae"] and results["test_std"]["mae"] == 0
    assert results["config"]["model"]["text_dim"] == 32
    run = out / "seed_1111"
    for name in ("best.pt", "last.pt", "predictions.csv", "learning_curves.png", "pred_vs_true.png", "token_weights.png"):
        assert (run / name).is_file(), name
    rows = (run / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("id,label,prediction") and len(rows) == 1 + 48


def test_same_seed_gives_identical_metrics(tmp_path):
    main(TINY + ["--epochs", "2", "--out", str(tmp_path / "a")])
    main(TINY + ["--epochs", "2", "--out", str(tmp_path / "b")])
    a, b = (json.loads((tmp_path / x / "results.json").read_text()) for x in "ab")
    for key in ("valid", "test", "test_drop", "best_epoch"):      # everything but the timings
        assert a["seeds"]["1111"][key] == b["seeds"]["1111"][key]


def test_eval_only_reproduces_checkpoint_test_metrics(tmp_path):
    main(TINY + ["--epochs", "2", "--out", str(tmp_path)])
    ckpt = str(tmp_path / "seed_1111" / "best.pt")
    stored = train.load_checkpoint(ckpt)["metrics"]["test"]
    again = train.run(train.parse_args(["--eval-only", ckpt]))
    assert again["test"] == pytest.approx(stored, abs=1e-6)


def test_load_trained_gives_the_model_and_data_of_the_run(tmp_path):
    main(TINY + ["--epochs", "2", "--out", str(tmp_path)])
    model, datasets, ckpt = train.load_trained(str(tmp_path / "seed_1111" / "best.pt"))
    assert not model.training and set(datasets) == {"train", "valid", "test"}
    again = train.evaluate(model, datasets["test"], 32, "cpu")
    assert again == pytest.approx(ckpt["metrics"]["test"], abs=1e-6)


def test_checkpoint_data_applies_changes_to_the_data_flags(tmp_path):
    main(TINY + ["--epochs", "1", "--out", str(tmp_path)])
    ckpt = train.load_checkpoint(str(tmp_path / "seed_1111" / "best.pt"))
    same, other = train.checkpoint_data(ckpt, verbose=False), train.checkpoint_data(ckpt, {"unaligned": True}, verbose=False)
    assert same["train"].tensors["audio"].shape[1] < other["train"].tensors["audio"].shape[1]
    # both standardised with the checkpoint's statistics, not refitted on the new data
    for ds in (same, other):
        assert np.array_equal(ds["train"].stats["audio"]["mean"], ckpt["stats"]["audio"]["mean"].numpy())


def test_train_seed_without_report_trains_the_same_and_writes_no_report(tmp_path):
    args = train.parse_args(TINY + ["--epochs", "2"])
    datasets = data.load_dataset("synthetic", synthetic_size="tiny", verbose=False)
    config = train.model_config(args, datasets["train"].dims)
    for name, report in (("with", True), ("without", False)):
        train.train_seed(args, config, datasets, 1111, "cpu", str(tmp_path / name), report=report)
    assert not (tmp_path / "without" / "predictions.csv").exists() and (tmp_path / "with" / "predictions.csv").exists()
    a, b = (train.load_checkpoint(str(tmp_path / name / "last.pt"))["model"] for name in ("with", "without"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    main(TINY + ["--epochs", "3", "--patience", "10", "--out", str(tmp_path / "full")])
    main(TINY + ["--epochs", "1", "--patience", "10", "--out", str(tmp_path / "cut")])
    assert main(["--resume", str(tmp_path / "cut" / "seed_1111" / "last.pt"), "--epochs", "3"]) == 0
    full, cut = (json.loads((tmp_path / x / "results.json").read_text()) for x in ("full", "cut"))
    assert cut["seeds"]["1111"]["epochs"] == 3
    assert cut["seeds"]["1111"]["test"] == pytest.approx(full["seeds"]["1111"]["test"], abs=1e-6)


def test_drop_modality_changes_evaluation(tmp_path):
    main(TINY + ["--epochs", "2", "--out", str(tmp_path)])
    ckpt = str(tmp_path / "seed_1111" / "best.pt")
    full = train.run(train.parse_args(["--eval-only", ckpt]))["test"]
    no_text = train.run(train.parse_args(["--eval-only", ckpt, "--drop-modality", "text"]))["test"]
    assert no_text != full
    stored = train.load_checkpoint(ckpt)["metrics"]["test_drop"]["text"]
    assert no_text == pytest.approx(stored, abs=1e-6)


def test_text_only_run_never_sees_audio_or_vision(tmp_path):
    main(TINY + ["--epochs", "1", "--modalities", "text", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["seeds"]["1111"]["test_drop"]) == {"text"}


def test_help_documents_every_flag_with_its_default():
    parser = train.build_parser()
    text = " ".join(parser.format_help().split())           # unwrap argparse's line breaks
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help text"
        if action.default is not None and not isinstance(action.default, bool):
            assert f"(default: {action.default})" in text, action.option_strings
    assert "(default: True)" not in text and "(default: None)" not in text   # switches read as "off unless given"
    assert "(default: tokens)" in text and "(default: 0.1)" in text


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "imdb"], "invalid choice: 'imdb'"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--interaction", "both"], "invalid choice: 'both'"),
    (["--align", "own"], "invalid choice: 'own'"),
    (["--d-model", "30", "--heads", "4"], "d_model"),
    (["--lr", "-1"], "need --lr > 0"),
    (["--drop-modality", "audio"], "--drop-modality applies to --eval-only"),
    (["--eval-only", "x.pt", "--drop-modality", "smell"], "invalid choice: 'smell'"),
    (["--seeds", "-5"], "--seeds must be different whole numbers from 0 to 4294967295"),
    (["--seeds", "1111", "1111"], "--seeds must be different whole numbers"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--dropout", "nan"], "--dropout must be a finite number, got nan"),
    (["--resume", "a.pt", "--eval-only", "b.pt"], "separate modes"),
])
def test_argparse_rejects_bad_values(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_ends_with_one_clear_message(tmp_path, capsys):
    assert main(["--dataset", "mosi", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no MOSI features found") and "--dataset synthetic" in err
    assert "Traceback" not in err


def test_checkpoint_from_other_data_is_refused(tmp_path, capsys):
    main(TINY + ["--epochs", "1", "--out", str(tmp_path)])
    ckpt = train.load_checkpoint(str(tmp_path / "seed_1111" / "best.pt"))
    ckpt["data"]["synthetic_size"] = "mosi"          # pretend it was trained on other widths
    ckpt["stats"] = None
    ckpt["data"]["normalize"] = False
    torch.save(ckpt, tmp_path / "other.pt")
    assert main(["--eval-only", str(tmp_path / "other.pt")]) == 2
    assert "trained on feature widths" in capsys.readouterr().err


def test_bad_checkpoint_and_missing_cuda_are_reported(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    assert main(["--eval-only", str(tmp_path / "x.pt")]) == 2
    assert "is not a MIAR checkpoint" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(TINY + ["--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_compare_prints_one_row_per_run(tmp_path, capsys):
    main(TINY + ["--epochs", "1", "--out", str(tmp_path / "cross")])
    main(TINY + ["--epochs", "1", "--interaction", "self", "--out", str(tmp_path / "self")])
    capsys.readouterr()
    rows = train.run(train.parse_args(["--compare", str(tmp_path / "cross"), str(tmp_path / "self" / "results.json")]))
    assert [r["name"] for r in rows] == ["cross", "self"] and rows[0]["seeds"] == ["1111"]
    assert rows[0]["mean"] != rows[1]["mean"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("run") and printed[1].startswith("cross") and printed[2].startswith("self")
    assert main(["--compare", str(tmp_path / "nothing")]) == 2


def write_results(path, valid_mae, test_mae):
    """A minimal results.json: seed -> valid/test MAE, as train.py writes it."""
    path.mkdir()
    seeds = {s: {"valid": {"mae": v}, "test": {"mae": t}} for s, v, t in zip(["1", "2", "3"], valid_mae, test_mae)}
    mean = {k: 0.5 for k in ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc5", "acc7", "mae", "corr")}
    (path / "results.json").write_text(json.dumps({"seeds": seeds, "test_mean": mean, "test_std": mean}))


def test_compare_pairs_seeds_with_the_first_run(tmp_path, capsys):
    write_results(tmp_path / "base", [0.4, 0.5, 0.6], [0.50, 0.50, 0.50])
    write_results(tmp_path / "other", [0.3, 0.3, 0.6], [0.40, 0.60, 0.45])    # lower on seeds 1 and 3
    rows = train.compare_runs([str(tmp_path / "base"), str(tmp_path / "other")])
    assert "wins" not in rows[0] and rows[1]["wins"] == (2, 3)
    assert rows[0]["valid_mae"] == pytest.approx(0.5) and rows[1]["valid_mae"] == pytest.approx(0.4)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("test MAE lower than base") and printed[2].endswith("| 0.400 | 2 of 3 seeds")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"seeds": {"1": {"test": {}}}}')
    assert main(["--compare", str(tmp_path / "base"), str(tmp_path / "broken")]) == 2
    assert "is not a results.json written by train.py" in capsys.readouterr().err
    for bad in (b"\x80\x02 a checkpoint, not JSON", b'{"seeds": {}}', b'{"seeds": {"1": {}}, "test_mean": []}'):
        (tmp_path / "broken" / "results.json").write_bytes(bad)
        assert main(["--compare", str(tmp_path / "broken")]) == 2
        assert "is not a results.json written by train.py" in capsys.readouterr().err
    write_results(tmp_path / "no_corr", [0.4] * 3, [0.5] * 3)
    r = json.loads((tmp_path / "no_corr" / "results.json").read_text())
    del r["test_mean"]["corr"]
    (tmp_path / "no_corr" / "results.json").write_text(json.dumps(r))
    assert main(["--compare", str(tmp_path / "no_corr")]) == 2
    assert "KeyError: 'corr'" in capsys.readouterr().err


# ---------------------------------------------------------------- safety: results, interruption, concurrency

def seeds_in(out):
    return sorted(json.loads((out / "results.json").read_text())["seeds"])


def test_a_later_run_into_the_same_folder_adds_its_seeds(tmp_path):
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert main(TINY + ["--epochs", "1", "--seeds", "1112", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results["seeds"]) == ["1111", "1112"]
    maes = [results["seeds"][s]["test"]["mae"] for s in ("1111", "1112")]
    assert results["test_mean"]["mae"] == pytest.approx(np.mean(maes))
    # the config that ran: model flags live in config.model only; no --out, --seeds or --resume
    assert results["config"]["model"]["d_model"] == 16 and "d_model" not in results["config"]["args"]
    assert not {"seeds", "out", "resume", "given"} & set(results["config"]["args"])
    assert results["config"]["args"]["data_path"] is None and results["seeds"]["1112"]["max_epochs"] == 1
    assert "data_dir" not in results["config"]["args"]        # synthetic data reads no folder


def test_the_same_run_started_from_another_folder_still_merges(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for cwd, seed in (("a", "1111"), ("b", "1112")):
        monkeypatch.chdir(tmp_path / cwd)
        assert main(TINY + ["--epochs", "1", "--seeds", seed, "--out", str(tmp_path / "run")]) == 0
    assert seeds_in(tmp_path / "run") == ["1111", "1112"]


def test_a_run_of_another_config_into_the_same_folder_is_refused_before_training(tmp_path, capsys):
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "results.json").read_text()
    assert main(TINY + ["--epochs", "1", "--seeds", "1112", "--lambda-con", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds seeds ['1111'] of another configuration (model.lambda_con: 0.1 there, 0.0 here)" in err
    assert not (tmp_path / "seed_1112").exists() and (tmp_path / "results.json").read_text() == before
    # the same seed again replaces itself (a rerun), whatever the config
    assert main(TINY + ["--epochs", "1", "--lambda-con", "0", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["config"]["model"]["lambda_con"] == 0


def test_ctrl_c_keeps_finished_seeds_removes_temporaries_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    save, count = torch.save, []

    def save_then_ctrl_c(obj, path):       # Ctrl-C between writing last.pt.tmp and renaming it, epoch 2 of seed 1112
        save(obj, path)
        if str(path).endswith(os.path.join("seed_1112", "last.pt.tmp")):
            count.append(path)
            if len(count) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_ctrl_c)
    out = tmp_path / "run"
    assert main(TINY + ["--epochs", "2", "--seeds", "1111", "1112", "1113", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    last = out.resolve() / "seed_1112" / "last.pt"
    assert "Traceback" not in err and "interrupted during seed 1112" in err and "keeps the finished seeds ['1111']" in err
    assert f"python train.py --resume {last}" in err and "(it then trains seeds [1113])" in err
    assert seeds_in(out) == ["1111"] and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(torch, "save", save)
    assert main(["--resume", str(last)]) == 0          # seed 1112 from epoch 1, then 1113; --epochs from the run
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["seeds"]) == ["1111", "1112", "1113"]
    assert results["seeds"]["1112"]["epochs"] == 2 and results["seeds"]["1113"]["max_epochs"] == 2


def test_ctrl_c_before_the_first_epoch_says_to_run_the_seeds_again(tmp_path, monkeypatch, capsys):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "evaluate", ctrl_c)
    assert main(TINY + ["--epochs", "1", "--seeds", "7", "8", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "no seed had finished" in err and "run the same command again with --seeds 7 8" in err
    assert "Traceback" not in err


def test_two_runs_into_one_folder_at_once_keep_both_seeds_and_refuse_the_same_seed(tmp_path, monkeypatch, capsys):
    """While run A trains seed 1111, run B trains 1112 into the same folder and run C asks for 1111 again.
    A's results.json must keep B's seed; C must be refused. (flock is per open file, so the runs can
    share this process: the test is deterministic.)"""
    train_seed, others = train.train_seed, []

    def train_seed_while_others_run(args, config, datasets, seed, *rest):
        if seed == 1111 and not others:
            others.append(main(TINY + ["--epochs", "1", "--seeds", "1112", "--out", str(tmp_path)]))
            others.append(main(TINY + ["--epochs", "1", "--seeds", "1111", "--out", str(tmp_path)]))
            assert seeds_in(tmp_path) == ["1112"]
        return train_seed(args, config, datasets, seed, *rest)

    monkeypatch.setattr(train, "train_seed", train_seed_while_others_run)
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert others == [0, 2]
    assert "seed 1111 is being trained right now by another run" in capsys.readouterr().err
    assert seeds_in(tmp_path) == ["1111", "1112"]


def test_results_json_is_replaced_under_the_lock_and_never_holds_nan(tmp_path, monkeypatch, capsys):
    write_json, held = train.write_json, []

    def write_checking_the_lock(path, obj):
        with open(tmp_path / "results.json.lock") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(path)
        write_json(path, obj)

    metrics = train.compute_metrics
    monkeypatch.setattr(train, "write_json", write_checking_the_lock)
    monkeypatch.setattr(train, "compute_metrics", lambda p, y: {**metrics(p, y), "corr": math.nan})
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert held == [str(tmp_path / "results.json")]
    text = (tmp_path / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in results.json"))
    assert results["seeds"]["1111"]["test"]["corr"] is None and results["test_mean"]["corr"] is None
    err = capsys.readouterr().err
    assert "warning: 7 metric(s) are undefined (NaN) and were written as null" in err
    assert "results.seeds.1111.test.corr" in err
    assert main(["--compare", str(tmp_path)]) == 0 and "nan" in capsys.readouterr().out


def test_resume_refuses_flags_that_conflict_with_the_checkpoint_and_records_what_ran(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--epochs", "1", "--lambda-con", "0.3", "--lr", "0.002", "--out", str(out)]) == 0
    last = str(out / "seed_1111" / "last.pt")
    assert main(["--resume", last, "--d-model", "32", "--lambda-con", "0.1", "--data-path", "other.pkl",
                 "--out", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    for named in ("--d-model 32 (checkpoint: 16)", "--lambda-con 0.1 (checkpoint: 0.3)",      # 0.1: the default, given
                  "--data-path other.pkl (checkpoint: None)", f"--out {tmp_path / 'elsewhere'} (checkpoint: {out})"):
        assert named in err, named
    assert "Traceback" not in err and not (tmp_path / "elsewhere").exists()
    assert main(["--resume", last, "--lambda-con", "0.3", "--out", str(out), "--device", "cpu"]) == 0   # agreeing flags
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"]["lambda_con"] == 0.3 and results["config"]["args"]["lr"] == 0.002
    assert results["seeds"]["1111"]["max_epochs"] == 1        # the run's --epochs, not the default 40


def test_eval_only_evaluates_other_data_with_the_checkpoint_statistics(tmp_path, capsys):
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    ckpt = str(tmp_path / "seed_1111" / "best.pt")
    other = tmp_path / "other.pkl"                     # the same widths, other utterances
    assert data.main(["--write-synthetic", str(other), "--size", "tiny", "--seed", "5"]) == 0
    capsys.readouterr()
    own = train.run(train.parse_args(["--eval-only", ckpt]))["test"]
    cross = train.run(train.parse_args(["--eval-only", ckpt, "--data-path", str(other)]))["test"]
    assert cross != own and f"on {other}: test" in capsys.readouterr().out
    narrow, _ = mmsa_pickle(tmp_path, name="narrow.pkl")     # widths 12 / 3 / 4
    assert main(["--eval-only", ckpt, "--data-path", str(narrow)]) == 2
    assert "has 12 features but the normalisation statistics have 32" in capsys.readouterr().err
    assert main(["--eval-only", ckpt, "--lr", "0.1", "--seeds", "5"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1 (checkpoint: (not used))" in err and "--seeds 5" in err


def test_checkpoint_stores_an_absolute_data_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert data.main(["--write-synthetic", "s.pkl", "--size", "tiny"]) == 0
    assert main(["--data-path", "s.pkl", "--d-model", "16", "--epochs", "1", "--out", "run"]) == 0
    ckpt = train.load_checkpoint("run/seed_1111/best.pt")
    assert ckpt["data"]["data_path"] == str(tmp_path / "s.pkl")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["--eval-only", "../run/seed_1111/best.pt"]) == 0


def file_at(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder {")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda out: file_at(out), "is a file; expected a folder"),
    (lambda out: file_at(out) / "sub", "cannot be written (Not a directory)"),
    (lambda out: (out / "results.json").mkdir(parents=True) or out, "results.json is a folder"),
    (lambda out: file_at(out / "results.json").parent, "is not a results.json written by train.py"),
])
def test_output_folder_problems_are_reported_before_any_data_is_read(tmp_path, monkeypatch, capsys, make, message):
    out = make(tmp_path / "out")
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("data was read before --out was checked"))
    assert main(TINY + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.__setitem__("config", {**c["config"], "d_model": 32}), "does not fit this MIAR"),
    (lambda c: c.pop("shuffle_state"), "is not a complete last.pt: missing ['shuffle_state']"),
    (lambda c: c["config"].__setitem__("colour", "red"), "its model config does not fit this MIAR"),
    (lambda c: c["data"].pop("dataset"), "missing ['data.dataset']"),
    (lambda c: c["optimizer"]["param_groups"][0].__setitem__("params", [0]), "its optimizer state does not fit"),
])
def test_damaged_last_pt_is_reported_before_any_data_is_read(tmp_path, monkeypatch, capsys, damage, message):
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    ckpt = train.load_checkpoint(str(tmp_path / "seed_1111" / "last.pt"))
    damage(ckpt)
    torch.save(ckpt, tmp_path / "seed_1111" / "last.pt")
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("data was read before the checkpoint was checked"))
    assert main(["--resume", str(tmp_path / "seed_1111" / "last.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_without_nan_replaces_every_non_finite_float_and_says_where():
    found = []
    clean = train.without_nan({"a": [1.0, math.nan], "b": {"c": math.inf, "d": "x", "e": 2}}, found)
    assert clean == {"a": [1.0, None], "b": {"c": None, "d": "x", "e": 2}}
    assert found == ["results.a[1]", "results.b.c"]


def test_check_results_names_each_difference_and_ignores_the_seeds_being_replaced():
    record = {"model": {"d_model": 64, "tau": 0.1}, "args": {"lr": 0.001, "modalities": ("text",)}}
    same = {"seeds": {"1": {}}, "config": {"model": {"d_model": 64, "tau": 0.1}, "args": {"lr": 0.001, "modalities": ["text"]}}}
    train.check_results(same, record, [2], "r.json")                       # tuples and lists agree
    other = {"seeds": {"1": {}}, "config": {"model": {"d_model": 32, "tau": 0.1}, "args": {"modalities": ["text"]}}}
    train.check_results(other, record, [1], "r.json")                      # only seed 1 there: it is replaced
    with pytest.raises(data.DataError, match=r"holds seeds \['1'\] of another configuration \(model.d_model: 32 there, "
                                             r"64 here; args.lr: '\(missing\)' there, 0.001 here\)"):
        train.check_results(other, record, [2], "r.json")
