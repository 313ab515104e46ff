"""train.py: the field's metrics by hand, batches, the loop, and the CLI end to end on a tiny synthetic set."""
import json
import math
import os
import pickle
import signal

import numpy as np
import pytest
import torch

import data
import runs
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


# ---------------------------------------------------------------- the loop, from Python

def tiny_data():
    return data.load_dataset("synthetic", synthetic_size="tiny", verbose=False)


def test_fit_and_report_are_what_the_command_line_runs(tmp_path):
    assert main(TINY + ["--epochs", "2", "--out", str(tmp_path / "cli")]) == 0
    datasets = tiny_data()
    config = MIARConfig(d_model=16).for_data(datasets)
    settings = train.TrainConfig(epochs=2, batch_size=16)
    model = train.new_model(config, 1111)
    history = train.fit(model, datasets, settings, 1111, str(tmp_path / "py"))
    result = train.report(model, datasets, settings, str(tmp_path / "py"), history)
    cli = json.loads((tmp_path / "cli" / "seed_1111" / "result.json").read_text())
    assert len(history) == 2 and result["test"] == cli["test"] and result["test_drop"] == cli["test_drop"]
    assert json.loads((tmp_path / "py" / "result.json").read_text())["config"] == cli["config"]


def test_fit_stops_a_diverged_run_with_a_clear_error(tmp_path, capsys):
    assert main(TINY + ["--epochs", "2", "--lambda-con", "1e38", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "seed 1111 diverged: the training loss became inf in epoch 1" in err and "Traceback" not in err
    assert not (tmp_path / "seed_1111" / "result.json").exists()


def test_train_config_checks_its_fields():
    with pytest.raises(ValueError, match=r"TrainConfig.modalities: found \('text', 'text'\)"):
        train.TrainConfig(modalities=("text", "text"))
    with pytest.raises(ValueError, match="TrainConfig.patience: found 0, expected 1 or more"):
        train.TrainConfig(patience=0)


# ---------------------------------------------------------------- CLI

def test_plot_run_writes_three_figures_and_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib
    before = matplotlib.get_backend()
    matplotlib.use("svg")                  # stands in for a notebook's inline backend
    try:
        history = [{"epoch": e, "train_loss": 1.0 / e, "train_l1": 0.9 / e, "valid_mae": 1.1 / e,
                    "valid_acc2_non0": 0.5 + 0.1 * e, "valid_acc7": 0.2} for e in (1, 2, 3)]
        rng = np.random.default_rng(0)
        runs.plot_run(str(tmp_path), history, rng.normal(size=20), rng.normal(size=20), rng.dirichlet(np.ones(4), 20))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for name in ("learning_curves.png", "pred_vs_true.png", "token_weights.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name


def test_cli_smoke_run_writes_each_seed_and_the_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parameters" in printed and "Acc-2 has-0/non-0" in printed
    run = out / "seed_1111"
    for name in ("best.pt", "last.pt", "result.json", "predictions.csv", "learning_curves.png", "pred_vs_true.png",
                 "token_weights.png"):
        assert (run / name).is_file(), name
    seed = json.loads((run / "result.json").read_text())
    assert set(seed["test"]) == set(runs.METRICS) and set(seed["test_drop"]) == {"text", "audio", "vision"}
    assert seed["config"]["model"]["text_dim"] == 32 and seed["config"]["train"]["epochs"] == 2
    assert seed["config"]["data"]["fingerprint"].startswith("v2:") and seed["torch"] == torch.__version__
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"]["1111"]["test"] == seed["test"] and results["test_std"]["mae"] == 0
    assert results["test_mean"]["mae"] == seed["test"]["mae"] and results["config"] == seed["config"]
    assert json.loads((out / "record.json").read_text()) == seed["config"]
    rows = (run / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,label,prediction,w_text,w_audio,w_vision,w_joint" and len(rows) == 1 + 48
    assert sorted(os.listdir(out)) == ["record.json", "results.json", "seed_1111"]   # no lock files left behind


def test_same_seed_gives_identical_metrics(tmp_path):
    main(TINY + ["--epochs", "2", "--out", str(tmp_path / "a")])
    main(TINY + ["--epochs", "2", "--out", str(tmp_path / "b")])
    a, b = (json.loads((tmp_path / x / "seed_1111" / "result.json").read_text()) for x in "ab")
    for key in ("valid", "test", "test_drop", "best_epoch"):      # everything but the timings
        assert a[key] == b[key]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished run (seed 1111, two epochs) that several tests read and never change."""
    out = tmp_path_factory.mktemp("trained")
    assert main(TINY + ["--epochs", "2", "--out", str(out)]) == 0
    return out, json.loads((out / "seed_1111" / "result.json").read_text())


def test_eval_only_reproduces_the_seed_result_and_drops_modalities(trained, capsys):
    out, result = trained
    ckpt = str(out / "seed_1111" / "best.pt")
    again = train.eval_only(train.parse_args(["--eval-only", ckpt]), "cpu")
    assert again["test"] == pytest.approx(result["test"], abs=1e-6)
    no_text = train.eval_only(train.parse_args(["--eval-only", ckpt, "--drop-modality", "text"]), "cpu")["test"]
    assert no_text != again["test"] and no_text == pytest.approx(result["test_drop"]["text"], abs=1e-6)


def test_load_trained_gives_the_model_and_data_of_the_run(trained):
    out, result = trained
    model, datasets, ckpt = runs.load_trained(str(out / "seed_1111" / "best.pt"))
    assert not model.training and set(datasets) == {"train", "valid", "test"} and ckpt["seed"] == 1111
    assert train.evaluate(model, datasets["test"], 32, "cpu") == pytest.approx(result["test"], abs=1e-6)


def test_model_and_data_loads_other_data_with_the_checkpoint_statistics(trained):
    out, _ = trained
    ckpt = runs.load_checkpoint(str(out / "seed_1111" / "best.pt"))
    (_, same), (_, other) = (runs.model_and_data(ckpt, "x", changes=c, verbose=False) for c in (None, {"unaligned": True}))
    assert same["train"].tensors["audio"].shape[1] < other["train"].tensors["audio"].shape[1]
    for ds in (same, other):     # standardised with the checkpoint's statistics, not refitted on the new data
        assert np.array_equal(ds["train"].stats["audio"]["mean"], ckpt["stats"]["audio"]["mean"].numpy())


def test_text_only_run_never_sees_audio_or_vision(tmp_path):
    main(TINY + ["--epochs", "1", "--modalities", "text", "--out", str(tmp_path)])
    assert set(json.loads((tmp_path / "results.json").read_text())["seeds"]["1111"]["test_drop"]) == {"text"}


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


def test_every_option_field_of_the_two_configs_is_a_flag_and_reaches_its_config():
    from dataclasses import fields
    flags = {a.dest: a.option_strings[0] for a in train.build_parser()._actions if a.option_strings}
    for cls in (MIARConfig, train.TrainConfig):
        for f in fields(cls):
            assert ("help" in f.metadata) == (f.name in flags), f.name
    assert flags["center"] == "--no-center" and flags["mlp_ratio"] == "--mlp-ratio"
    args = train.parse_args(["--mlp-ratio", "2", "--no-center", "--patience", "3", "--modalities", "text", "audio"])
    assert args.config.mlp_ratio == 2 and args.config.center is False
    assert args.settings.patience == 3 and args.settings.modalities == ("text", "audio")


def test_a_new_option_field_is_one_edit():
    import argparse
    from dataclasses import dataclass
    from miar import option

    @dataclass
    class Fork(MIARConfig):
        gate: float = option(1, "a new idea")      # an int default: the flag's type is the annotation's

    parser = argparse.ArgumentParser()
    train.add_options(parser, "model", Fork)
    args = parser.parse_args(["--gate", "0.25", "--d-model", "32"])
    assert train.from_args(Fork, args) == Fork(gate=0.25, d_model=32)


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "imdb"], "invalid choice: 'imdb'"),
    (["--epochs", "0"], "TrainConfig.epochs: found 0, expected 1 or more"),
    (["--interaction", "both"], "invalid choice: 'both'"),
    (["--align", "own"], "invalid choice: 'own'"),
    (["--d-model", "30", "--heads", "4"], "d_model"),
    (["--lr", "-1"], "TrainConfig.lr: found -1.0, expected > 0"),
    (["--drop-modality", "audio"], "--drop-modality applies to --eval-only"),
    (["--eval-only", "x.pt", "--drop-modality", "smell"], "invalid choice: 'smell'"),
    (["--seeds", "-5"], "--seeds must be different whole numbers from 0 to 4294967295"),
    (["--seeds", "1111", "1111"], "--seeds must be different whole numbers"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--dropout", "nan"], "--dropout must be a finite number, got nan"),
    (["--compare", "a", "--eval-only", "b.pt"], "--eval-only would ignore --compare"),
    (["--data-path", "x.pkl", "--unaligned"], "with --data-path the file itself says whether it is aligned"),
    (["--eval-only", "b.pt", "--lr", "0.1", "--seeds", "5"], "--eval-only would ignore --lr, --seeds; leave them out"),
    (["--compare", "a", "--epochs", "3"], "--compare would ignore --epochs; leave them out (it takes only run folders)"),
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


def test_eval_only_on_other_data_uses_the_checkpoint_statistics_and_refuses_training_flags(trained, tmp_path, capsys):
    out, _ = trained
    ckpt = str(out / "seed_1111" / "best.pt")
    other = tmp_path / "other.pkl"                     # the same widths, other utterances
    assert main(["--write-synthetic", str(other), "--synthetic-size", "tiny", "--synthetic-seed", "5"]) == 0
    capsys.readouterr()
    own = train.eval_only(train.parse_args(["--eval-only", ckpt]), "cpu")["test"]
    cross = train.eval_only(train.parse_args(["--eval-only", ckpt, "--data-path", str(other)]), "cpu")["test"]
    assert cross != own and f"on {other}: test" in capsys.readouterr().out
    narrow, _ = mmsa_pickle(tmp_path, name="narrow.pkl")     # widths 12 / 3 / 4
    assert main(["--eval-only", ckpt, "--data-path", str(narrow)]) == 2
    assert "has 12 features but the normalisation statistics have 32" in capsys.readouterr().err


def test_bad_checkpoint_and_missing_cuda_are_reported(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    assert main(["--eval-only", str(tmp_path / "x.pt")]) == 2
    assert "is not a MIAR checkpoint" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(TINY + ["--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_checkpoint_stores_an_absolute_data_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--write-synthetic", "s.pkl", "--synthetic-size", "tiny"]) == 0
    assert main(["--data-path", "s.pkl", "--d-model", "16", "--epochs", "1", "--out", "run"]) == 0
    ckpt = runs.load_checkpoint("run/seed_1111/best.pt")
    assert ckpt["record"]["data"]["data_path"] == str(tmp_path / "s.pkl")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["--eval-only", "../run/seed_1111/best.pt"]) == 0


# ---------------------------------------------------------------- safety: run folders, stops, concurrency

def seeds_in(out):
    return sorted(json.loads((out / "results.json").read_text())["seeds"])


def test_a_later_run_into_the_same_folder_adds_its_seeds(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for cwd, seed in (("a", "1111"), ("b", "1112")):          # from two folders: other absolute paths, same data
        monkeypatch.chdir(tmp_path / cwd)
        assert main(TINY + ["--epochs", "1", "--seeds", seed, "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sorted(results["seeds"]) == ["1111", "1112"]
    maes = [results["seeds"][s]["test"]["mae"] for s in ("1111", "1112")]
    assert results["test_mean"]["mae"] == pytest.approx(np.mean(maes))


def test_a_run_of_another_config_into_the_same_folder_is_refused_before_training(tmp_path, capsys):
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "results.json").read_text()
    assert main(TINY + ["--epochs", "1", "--seeds", "1112", "--lambda-con", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ran another configuration or other data (model.lambda_con: 0.1 there, 0.0 here)" in err
    assert "to start over, delete" in err
    assert not (tmp_path / "seed_1112").exists() and (tmp_path / "results.json").read_text() == before
    # a finished seed is never replaced: not by another config (case 2), and the same command keeps it
    assert main(TINY + ["--epochs", "1", "--lambda-con", "0", "--out", str(tmp_path)]) == 2
    assert "model.lambda_con: 0.1 there, 0.0 here" in capsys.readouterr().err
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert "seed 1111: finished before, kept" in capsys.readouterr().out
    assert (tmp_path / "results.json").read_text() == before


def test_data_rewritten_at_the_same_path_is_not_merged_or_resumed(tmp_path, capsys):
    path, out = tmp_path / "d.pkl", str(tmp_path / "run")
    flags = ["--data-path", str(path), "--d-model", "16", "--epochs", "1", "--out", out]
    assert main(["--write-synthetic", str(path), "--synthetic-size", "tiny", "--synthetic-seed", "0"]) == 0
    assert main(flags) == 0
    assert main(["--write-synthetic", str(path), "--synthetic-size", "tiny", "--synthetic-seed", "7"]) == 0   # other data, same path
    capsys.readouterr()
    assert main(flags + ["--seeds", "1112"]) == 2
    assert "data.fingerprint:" in capsys.readouterr().err and not (tmp_path / "run" / "seed_1112").exists()
    assert main(flags + ["--resume"]) == 2            # seed 1111 is finished on the old data: not kept silently
    assert "data.fingerprint:" in capsys.readouterr().err


def save_then(stop, when):
    """torch.save that writes, then calls stop() the when-th time it writes a seed_1112 last.pt."""
    save, count = torch.save, []

    def save_and_stop(obj, path):
        save(obj, path)
        if os.path.basename(os.path.dirname(str(path))) == "seed_1112" and "last.pt" in str(path):
            count.append(path)
            if len(count) == when:
                stop()
    return save_and_stop


def ctrl_c():
    raise KeyboardInterrupt


def test_ctrl_c_keeps_finished_seeds_removes_temporaries_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    command = TINY + ["--epochs", "2", "--seeds", "1111", "1112", "1113", "--out", str(out)]
    monkeypatch.setattr(torch, "save", save_then(ctrl_c, when=2))   # in epoch 2 of seed 1112, before the rename
    assert main(command) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) during seed 1112" in err and "Finished seeds kept in" in err and "[1111]" in err
    assert "seed 1112 goes on from its last.pt" in err and f"--out {out}\n" in err and "Traceback" not in err
    assert seeds_in(out) == ["1111"] and not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(command + ["--resume"]) == 0          # keeps 1111, seed 1112 from epoch 1, then 1113
    assert "seed 1111: finished before, kept" in capsys.readouterr().out
    assert seeds_in(out) == ["1111", "1112", "1113"]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, monkeypatch):
    command = TINY + ["--epochs", "3", "--seeds", "1112"]
    assert main(command + ["--out", str(tmp_path / "full")]) == 0
    monkeypatch.setattr(torch, "save", save_then(ctrl_c, when=3))   # after epoch 1 (best, last), in epoch 2
    assert main(command + ["--out", str(tmp_path / "cut")]) == 130
    monkeypatch.undo()
    assert main(command + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    full, cut = (json.loads((tmp_path / x / "seed_1112" / "result.json").read_text()) for x in ("full", "cut"))
    assert cut["epochs"] == 3 and cut["test"] == pytest.approx(full["test"], abs=1e-6)


def test_sigterm_stops_like_ctrl_c_with_exit_code_143(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save_then(lambda: os.kill(os.getpid(), signal.SIGTERM), when=1))
    assert main(TINY + ["--epochs", "2", "--seeds", "1111", "1112", "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert "stopped (SIGTERM) during seed 1112" in err and "Go on with the same command" in err and "Traceback" not in err
    assert seeds_in(out) == ["1111"] and not list(out.rglob("*.tmp"))
    assert signal.getsignal(signal.SIGTERM) is not runs.on_signal       # main puts the old handlers back
    assert signal.getsignal(signal.SIGINT) is not runs.on_signal


def test_a_full_disk_keeps_finished_seeds_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    def disk_full():
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2304 vs 2198")
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save_then(disk_full, when=1))
    assert main(TINY + ["--epochs", "2", "--seeds", "1111", "1112", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "is the disk full" in err and "Go on with" in err and "Traceback" not in err
    assert seeds_in(out) == ["1111"] and not list(out.rglob("*.tmp"))


def test_two_runs_into_one_folder_at_once_keep_both_seeds_and_refuse_the_same_seed(tmp_path, monkeypatch, capsys):
    """While run A trains seed 1111, run B trains 1112 into the same folder and run C asks for 1111 again.
    A's summary must keep B's seed; C must be refused. (flock is per open file, so the runs can share
    this process: the test is deterministic.)"""
    fit, others = train.fit, []

    def fit_while_others_run(model, datasets, settings, seed, *rest, **kw):
        if seed == 1111 and not others:
            others.append(main(TINY + ["--epochs", "1", "--seeds", "1112", "--out", str(tmp_path)]))
            others.append(main(TINY + ["--epochs", "1", "--seeds", "1111", "--out", str(tmp_path)]))
            assert seeds_in(tmp_path) == ["1112"]
        return fit(model, datasets, settings, seed, *rest, **kw)

    monkeypatch.setattr(train, "fit", fit_while_others_run)
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert others == [0, 2]
    assert "seed_1111 is being trained right now by another run" in capsys.readouterr().err
    assert seeds_in(tmp_path) == ["1111", "1112"]


def test_undefined_metrics_are_written_as_null_with_a_warning(tmp_path, monkeypatch, capsys):
    metrics = train.compute_metrics
    monkeypatch.setattr(train, "compute_metrics", lambda p, y: {**metrics(p, y), "corr": math.nan})
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert results["seeds"]["1111"]["test"]["corr"] is None and results["test_mean"]["corr"] is None
    assert "undefined metric(s) (NaN) written as null" in capsys.readouterr().err
    assert main(["--compare", str(tmp_path)]) == 0 and "nan" in capsys.readouterr().out


def test_a_damaged_summary_is_rewritten_and_costs_no_seed(tmp_path):
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    (tmp_path / "results.json").write_text('{"seeds": {"1111": "garbage"}}')
    assert main(TINY + ["--epochs", "1", "--seeds", "1112", "--out", str(tmp_path)]) == 0
    assert seeds_in(tmp_path) == ["1111", "1112"]


def file_at(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder {")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda out: file_at(out), "is a file; expected a folder"),
    (lambda out: file_at(out) / "sub", "cannot be written (Not a directory)"),
    (lambda out: file_at(out / "seed_3" / "result.json").parent.parent, "is not a result.json written by train.py"),
    (lambda out: file_at(out / "seed_1111").parent, "seed_1111 is a file; expected the seed's folder"),
    (lambda out: (out / "seed_1111" / "last.pt").mkdir(parents=True) or out, "last.pt is a folder; expected the file"),
])
def test_output_folder_problems_are_reported_before_any_data_is_read(tmp_path, monkeypatch, capsys, make, message):
    out = make(tmp_path / "out")
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("data was read before --out was checked"))
    assert main(TINY + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.pop("state"), "is not a last.pt written by this train.py: missing ['state']"),
    (lambda c: c.update(seed=1111) or "seed", "holds the training of seed 1111, not of seed 1112 (was it copied there?)"),
    (lambda c: None, "not a MIAR checkpoint"),
])
def test_damaged_last_pt_is_reported_before_any_data_is_read(tmp_path, monkeypatch, capsys, damage, message):
    command = TINY + ["--epochs", "2", "--out", str(tmp_path)]
    monkeypatch.setattr(torch, "save", save_then(ctrl_c, when=2))     # in epoch 2: epoch 1's last.pt is there
    assert main(command + ["--seeds", "1111", "1112"]) == 130
    monkeypatch.undo()
    last = tmp_path / "seed_1112" / "last.pt"
    ckpt = runs.load_checkpoint(str(last), runs.LAST_KEYS)
    torch.save(ckpt, last) if damage(ckpt) is not None else last.write_bytes(b"PK\x03\x04 damaged")
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("data was read before last.pt was checked"))
    capsys.readouterr()
    assert main(command + ["--seeds", "1111", "1112", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_resume_refuses_other_flags_naming_them(tmp_path, monkeypatch, capsys):
    command = TINY + ["--epochs", "2", "--seeds", "1112", "--out", str(tmp_path)]
    monkeypatch.setattr(torch, "save", save_then(ctrl_c, when=2))
    assert main(command) == 130
    monkeypatch.undo()
    assert main(command + ["--lr", "0.01", "--resume"]) == 2
    assert "train.lr: 0.001 there, 0.01 here" in capsys.readouterr().err


# ---------------------------------------------------------------- a run folder, by construction

def test_two_configurations_started_together_cannot_share_a_folder(tmp_path, monkeypatch, capsys):
    fit, other = train.fit, []

    def fit_while_another_config_starts(model, datasets, settings, seed, *rest, **kw):
        if not other:        # run B starts while run A trains: A's record.json is already there
            other.append(main(TINY + ["--epochs", "1", "--seeds", "2", "--lr", "3e-3", "--out", str(tmp_path)]))
        return fit(model, datasets, settings, seed, *rest, **kw)

    monkeypatch.setattr(train, "fit", fit_while_another_config_starts)
    assert main(TINY + ["--epochs", "1", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert other == [2] and "train.lr: 0.001 there, 0.003 here" in capsys.readouterr().err
    assert seeds_in(tmp_path) == ["1"]


def test_the_folder_record_is_written_once_and_another_record_is_refused(tmp_path):
    runs.hold_to_record(str(tmp_path), {"model": {"d_model": 16}})
    runs.hold_to_record(str(tmp_path), {"model": {"d_model": 16}})       # the same record: taken
    with pytest.raises(data.DataError, match=r"model.d_model: 16 there, 32 here.*to start over, delete"):
        runs.hold_to_record(str(tmp_path), {"model": {"d_model": 32}})
    assert json.loads((tmp_path / "record.json").read_text()) == {"model": {"d_model": 16}}
    assert os.listdir(tmp_path) == ["record.json"]


def test_a_folder_without_record_adopts_the_record_its_seeds_share(tmp_path, capsys):
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    (tmp_path / "record.json").unlink()                     # as written before record.json existed
    assert main(TINY + ["--epochs", "1", "--seeds", "1112", "--lr", "0.01", "--out", str(tmp_path)]) == 2
    assert "train.lr: 0.001 there, 0.01 here" in capsys.readouterr().err
    seed = json.loads((tmp_path / "seed_1111" / "result.json").read_text())
    assert json.loads((tmp_path / "record.json").read_text()) == seed["config"]
    assert main(TINY + ["--epochs", "1", "--seeds", "1112", "--out", str(tmp_path)]) == 0
    assert seeds_in(tmp_path) == ["1111", "1112"]


def test_missing_outputs_of_a_finished_seed_are_rebuilt_and_its_result_kept(tmp_path):
    assert main(TINY + ["--epochs", "2", "--out", str(tmp_path)]) == 0
    run = tmp_path / "seed_1111"
    result, predictions = (run / "result.json").read_bytes(), (run / "predictions.csv").read_bytes()
    (run / "predictions.csv").write_bytes(b"")     # as a full disk left it before outputs came first
    (run / "token_weights.png").unlink()
    assert main(TINY + ["--epochs", "2", "--out", str(tmp_path)]) == 0
    assert (run / "predictions.csv").read_bytes() != b"" and (run / "token_weights.png").is_file()
    (run / "token_weights.png").unlink()
    assert main(TINY + ["--epochs", "2", "--out", str(tmp_path)]) == 0
    assert (run / "result.json").read_bytes() == result and (run / "predictions.csv").read_bytes() == predictions


def test_outputs_come_before_the_result_so_a_failed_output_leaves_the_seed_unfinished(tmp_path, monkeypatch, capsys):
    def disk_full(*a, **k):
        raise runs.Stopped("cannot write predictions.csv (No space left on device); is the disk full?", 1)
    monkeypatch.setattr(train, "write_predictions", disk_full)
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 1
    assert "seed 1111 goes on from its last.pt" in capsys.readouterr().err
    assert not (tmp_path / "seed_1111" / "result.json").exists()
    monkeypatch.undo()
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0 and seeds_in(tmp_path) == ["1111"]


def test_a_stop_after_the_result_counts_the_seed_as_finished(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "summarise", lambda out: ctrl_c())
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "Finished seeds kept in" in err and "[1111]" in err and "seed 1111 is finished" in err


def test_two_quick_ctrl_c_stop_once_without_a_traceback(tmp_path, monkeypatch, capsys):
    def two_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)       # arrives while the first stop is handled: ignored
    monkeypatch.setattr(torch, "save", save_then(two_signals, when=1))
    assert main(TINY + ["--epochs", "2", "--seeds", "1111", "1112", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) during seed 1112" in err and "seed 1112 starts again" in err
    assert "Traceback" not in err and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def test_temporaries_of_a_killed_run_are_removed_from_the_seeds_this_run_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", save_then(ctrl_c, when=1))
    assert main(TINY + ["--epochs", "2", "--seeds", "1112", "--out", str(tmp_path)]) == 130
    monkeypatch.undo()
    (tmp_path / "seed_1112" / "last.pt.99999.tmp").write_bytes(b"half")      # as kill -9 leaves it
    assert main(TINY + ["--epochs", "2", "--seeds", "1112", "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_train_split_too_small_for_the_contrastive_loss_is_refused_but_evaluation_is_not(trained, tmp_path, capsys):
    path, raw = mmsa_pickle(tmp_path)
    raw["train"] = {k: v[:1] for k, v in raw["train"].items()}
    path.write_bytes(pickle.dumps(raw))
    assert main(["--data-path", str(path), "--d-model", "16", "--out", str(tmp_path / "o")]) == 2
    assert "leave the contrastive loss no other utterance" in capsys.readouterr().err
    assert main(TINY + ["--batch-size", "1", "--out", str(tmp_path / "b")]) == 2
    out, _ = trained
    assert main(["--eval-only", str(out / "seed_1111" / "best.pt"), "--batch-size", "1"]) == 0


# ---------------------------------------------------------------- a fork: new fields and stateful training ideas

def test_resume_is_bit_exact_with_other_settings_and_a_stateful_addition(tmp_path, monkeypatch):
    base = train.training_state

    def with_warmup(model, settings, seed):     # a fork's learning-rate warmup: one entry in the mapping
        state = base(model, settings, seed)
        warmup = torch.optim.lr_scheduler.LambdaLR(state["optimizer"], lambda step: min(1.0, (step + 1) / 7))
        state["optimizer"].register_step_post_hook(lambda *_: warmup.step())
        return {**state, "warmup": warmup}

    monkeypatch.setattr(train, "training_state", with_warmup)
    command = TINY + ["--epochs", "3", "--seeds", "1112", "--lr", "3e-3", "--batch-size", "8", "--dropout", "0.2"]
    assert main(command + ["--out", str(tmp_path / "full")]) == 0
    with monkeypatch.context() as m:
        m.setattr(torch, "save", save_then(ctrl_c, when=3))      # after epoch 1 (best, last), in epoch 2
        assert main(command + ["--out", str(tmp_path / "cut")]) == 130
    assert "warmup" in runs.load_checkpoint(str(tmp_path / "cut" / "seed_1112" / "last.pt"), runs.LAST_KEYS)["state"]
    assert main(command + ["--out", str(tmp_path / "cut")]) == 0
    full, cut = (json.loads((tmp_path / x / "seed_1112" / "result.json").read_text()) for x in ("full", "cut"))
    assert cut["epochs"] == 3 and cut["valid"] == full["valid"] and cut["test"] == full["test"]


def test_a_config_field_without_a_flag_fails_loudly():
    import argparse
    from dataclasses import dataclass

    @dataclass
    class Plain(MIARConfig):
        gate: float = 1.0

    with pytest.raises(TypeError, match="Plain.gate has no flag: declare it with miar.option"):
        train.add_options(argparse.ArgumentParser(), "model", Plain)


def test_a_neutral_new_field_lets_the_baseline_folder_take_new_seeds(tmp_path, monkeypatch, capsys):
    from dataclasses import dataclass
    from miar import option

    @dataclass
    class Fork(MIARConfig):
        fusion: str = option("softmax", "the fusion gate", ("softmax", "sigmoid"), neutral=True)

    assert runs.as_record(Fork()) == runs.as_record(MIARConfig())        # at its default it is left out
    assert main(TINY + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    monkeypatch.setattr(train, "MIARConfig", Fork)
    assert main(TINY + ["--epochs", "1", "--seeds", "1112", "--out", str(tmp_path)]) == 0
    assert main(TINY + ["--epochs", "1", "--seeds", "1113", "--fusion", "sigmoid", "--out", str(tmp_path)]) == 2
    assert "model.fusion: '(missing)' there, 'sigmoid' here" in capsys.readouterr().err


def test_load_trained_rebuilds_a_forked_model_class(tmp_path):
    from dataclasses import dataclass
    from miar import option

    @dataclass
    class Fork(MIARConfig):
        scale: float = option(1.0, "a learned output scale starts here", neutral=True)

    class Scaled(MIAR):
        def __init__(self, config):
            super().__init__(config)
            self.scale = torch.nn.Parameter(torch.tensor(config.scale))

    datasets = tiny_data()
    torch.manual_seed(0)
    model = Scaled(Fork(d_model=16, scale=2.0).for_data(datasets))
    settings = train.TrainConfig(epochs=1, batch_size=16)
    train.fit(model, datasets, settings, 0, str(tmp_path))
    loaded, _, ckpt = runs.load_trained(str(tmp_path / "best.pt"), model_class=Scaled, config_class=Fork)
    assert isinstance(loaded, Scaled) and loaded.config.scale == 2.0 and torch.equal(loaded.scale, model.scale)
