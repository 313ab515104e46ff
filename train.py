"""
train.py -- train MIAR and evaluate it with the field's metrics.

    python train.py --dataset synthetic                         # no download needed
    python train.py --dataset mosi --seeds 1111 1112 1113 1114 1115
    python train.py --eval-only runs/mosi/seed_1111/best.pt --drop-modality audio
    python train.py --compare runs/mosi runs/mosi_self          # did it help? paired by seed (compare.py)
    python train.py --dataset mosi --check-data                 # what the data flags load

Read it top to bottom: TrainConfig (beside miar.MIARConfig), the metrics, the batches, `fit` (the
learning algorithm, on one screen), `report` (test metrics of the best-valid checkpoint), then the
command line, whose model and training flags are made from the two dataclasses. Model selection sees
the valid split only; test is touched once, after training. Run folders (--out): runs.py.
"""
import argparse
import contextlib
import math
import os
import signal
import sys
import time
import typing
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

import synthetic
from compare import compare_runs, print_table
from data import DataError, load_dataset, summarise as summarise_data
from miar import MIAR, MODALITIES, MIARConfig, count_parameters, option
from runs import (OUTPUTS, RESULT, RESULTS, Stopped, claim, hold_to_record, load_checkpoint,
                  model_and_data, on_signal, plot_run, prepare_out, run_record, save_checkpoint, stats_to_tensors,
                  stopped_message, summarise, write_json, write_predictions, written)


@dataclass
class TrainConfig:
    """The training settings. Fields made with `option` are flags too (--batch-size ...)."""
    epochs: int = option(40, "maximum epochs")
    batch_size: int = option(32, "utterances per batch (also the InfoNCE candidates)")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-4, "AdamW decoupled weight decay")
    patience: int = option(10, "early stop after this many epochs without a better valid MAE")
    grad_clip: float = option(1.0, "max gradient norm")
    modalities: tuple = option(MODALITIES, "train and evaluate with only these (text: the text-only baseline)",
                               MODALITIES)

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        checks = [("epochs", self.epochs >= 1, "1 or more"), ("batch_size", self.batch_size >= 1, "1 or more"),
                  ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("patience", self.patience >= 1, "1 or more"), ("grad_clip", self.grad_clip > 0, "> 0"),
                  ("modalities", 0 < len(set(self.modalities)) == len(self.modalities) and
                   set(self.modalities) <= set(MODALITIES), f"different names from {list(MODALITIES)}")]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}: found {getattr(self, name)!r}, expected {expected}")


# ----------------------------------------------------------------------------
# Metrics, exactly as MMSA / MulT and nearly every paper compute them (README, "Metrics").
# All are fractions; the printed tables show x100.

def weighted_f1(truth, guess):
    """F1 of a binary problem, averaged over the two classes weighted by their true
    support (sklearn's average='weighted'); a class never predicted has F1 0."""
    score = 0.0
    for cls in (False, True):
        tp = np.sum((guess == cls) & (truth == cls))
        f1 = 2 * tp / (np.sum(guess == cls) + np.sum(truth == cls)) if tp else 0.0   # 2tp / (2tp + fp + fn)
        score += f1 * np.sum(truth == cls)
    return float(score / len(truth))


def compute_metrics(pred, label):
    """Regression-protocol metrics of predictions `pred` against labels `label` ((N,) each)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    label = np.asarray(label, dtype=np.float64).reshape(-1)
    if pred.shape != label.shape or len(pred) == 0:
        raise ValueError(f"compute_metrics: pred {pred.shape}, label {label.shape}; expected two equal, non-empty (N,)")
    if not (np.isfinite(pred).all() and np.isfinite(label).all()):
        raise ValueError("compute_metrics: non-finite predictions or labels; the model diverged or the data is broken")
    nonzero = label != 0      # "non-0": neutral utterances are dropped, then > 0 vs <= 0
    return {
        # "has-0": non-negative vs negative, neutral utterances count as non-negative
        "acc2_has0": float(np.mean((pred >= 0) == (label >= 0))),
        "f1_has0": weighted_f1(label >= 0, pred >= 0),
        "acc2_non0": float(np.mean((pred[nonzero] > 0) == (label[nonzero] > 0))) if nonzero.any() else math.nan,
        "f1_non0": weighted_f1(label[nonzero] > 0, pred[nonzero] > 0) if nonzero.any() else math.nan,
        # np.round rounds half to even (2.5 -> 2), as the reference implementations do
        "acc5": float(np.mean(np.round(np.clip(pred, -2, 2)) == np.round(np.clip(label, -2, 2)))),
        "acc7": float(np.mean(np.round(np.clip(pred, -3, 3)) == np.round(np.clip(label, -3, 3)))),
        "mae": float(np.mean(np.abs(pred - label))),
        # undefined (NaN) for a constant predictor, as np.corrcoef says
        "corr": float(np.corrcoef(pred, label)[0, 1]) if pred.std() > 0 and label.std() > 0 else math.nan,
    }


# ----------------------------------------------------------------------------
# Batches

BUCKET_BATCHES = 20   # training batches are formed from windows of this many batches


def spans(dataset):
    """(N,) frames up to the last real one, summed over modalities: what a sample costs."""
    span = 0
    for m in MODALITIES:
        mask = dataset.tensors[f"{m}_mask"]
        last = mask.shape[1] - mask.flip(1).int().argmax(dim=1)       # one past the last real frame
        span = span + torch.where(mask.any(dim=1), last, 0)
    return span


def trim_padding(batch):
    """Drop the trailing frames that are padding in every sample of the batch. Exact: the model
    gives the same outputs with or without them (positions count from the first slot, and padded
    keys get weight 0), but attention costs grow with length squared. Left-padded files (MulT's
    unaligned ones) have real frames at the end and are left as they are."""
    for m in MODALITIES:
        mask = batch[f"{m}_mask"]
        real = mask.any(dim=0).nonzero()
        keep = int(real.max()) + 1 if len(real) else 1       # all padding: keep one (masked) frame
        batch[m], batch[f"{m}_mask"] = batch[m][:, :keep], mask[:, :keep]
    return batch


def batches(dataset, batch_size, generator=None):
    """Batches of `dataset` as dicts, trailing padding trimmed.

    Without a generator: in order (evaluation). With one (training): shuffled, then sorted by
    length inside windows of BUCKET_BATCHES batches, and the batches of a window shuffled again.
    Utterances of similar length share a batch, so little time goes to padding, while which
    utterances meet, and in which order the batches come, stays random from epoch to epoch."""
    n = len(dataset)
    if generator is None:
        groups = [torch.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    else:
        order, span, groups = torch.randperm(n, generator=generator), spans(dataset), []
        window = batch_size * BUCKET_BATCHES
        for start in range(0, n, window):
            chunk = order[start:start + window]
            chunk = chunk[torch.argsort(span[chunk], stable=True)]
            chunk_groups = list(chunk.split(batch_size))
            groups += [chunk_groups[i] for i in torch.randperm(len(chunk_groups), generator=generator)]
    for group in groups:
        yield trim_padding(dataset[group.tolist()])


def model_inputs(batch, device, drop=()):
    """The model's keyword arguments; each modality in `drop` is zeroed and fully masked,
    which is how we ask "how much does the model need this modality?"."""
    unknown = set(drop) - set(MODALITIES)
    if unknown:
        raise ValueError(f"model_inputs: cannot drop {sorted(unknown)}; expected names from {list(MODALITIES)}")
    inputs = {}
    for m in MODALITIES:
        x, mask = batch[m].to(device), batch[f"{m}_mask"].to(device)
        if m in drop:
            x, mask = torch.zeros_like(x), torch.zeros_like(mask)
        inputs[m], inputs[f"{m}_mask"] = x, mask
    return inputs


@torch.no_grad()
def predict(model, dataset, batch_size, device, drop=()):
    """Predictions (N,), token weights (N, 4) and labels (N,) of a whole split, in order."""
    model.eval()
    preds, weights = [], []
    for batch in batches(dataset, batch_size):
        out = model(**model_inputs(batch, device, drop))
        preds.append(out.pred.float().cpu())
        weights.append(out.weights.float().cpu())
    return torch.cat(preds).numpy(), torch.cat(weights).numpy(), dataset.tensors["label"].numpy()


def evaluate(model, dataset, batch_size, device, drop=()):
    pred, _, label = predict(model, dataset, batch_size, device, drop)
    return compute_metrics(pred, label)


# ----------------------------------------------------------------------------
# The learning algorithm

class Resumable:
    """A piece of training state without a state_dict of its own (a random generator, the history of
    the epochs): `value` is the piece, and its state is saved and restored through `get` and `set`."""

    def __init__(self, value, get, set):
        self.value, self.state_dict, self.load_state_dict = value, get, set


def training_state(model, settings, seed):
    """Everything that going on from last.pt must restore, in one mapping of objects with state_dict and
    load_state_dict: `fit` saves and restores it, each in one loop. A fork's stateful idea (a learning-rate
    scheduler) is one entry here, and its use in `fit`; nothing else changes for --resume."""
    # fused: one kernel updates all parameters instead of one small kernel per tensor
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    shuffle, history = torch.Generator().manual_seed(seed), []     # the order of the batches; one dict an epoch
    return {"model": model, "optimizer": opt,
            "shuffle": Resumable(shuffle, shuffle.get_state, shuffle.set_state),
            "torch": Resumable(None, torch.get_rng_state, torch.set_rng_state),           # dropout (on the CPU)
            "history": Resumable(history, lambda: list(history), history.extend)}        # the best epoch follows


def fit(model, datasets, settings, seed, folder, device="cpu", resume=None):
    """Train `model` on datasets["train"] with early stopping on valid MAE. Writes folder/best.pt (the
    best-valid weights) and folder/last.pt (the training state after each epoch; `resume` is that file,
    loaded, to go on from) and returns the epochs' history.

    The caller seeds torch before building the model (see `new_model`), so one seed decides the
    initial weights, the dropout and, through `shuffle`, the order of the batches."""
    os.makedirs(folder, exist_ok=True)
    train, skipped = datasets["train"], [m for m in MODALITIES if m not in settings.modalities]
    keep = dict(record=run_record(model.config, settings, train), stats=stats_to_tensors(train.stats), seed=seed)
    state = training_state(model, settings, seed)
    if resume is not None:     # continue exactly where last.pt stopped
        missing = set(state) - set(resume["state"])
        if missing:
            raise DataError(f"{folder}/last.pt holds no {sorted(missing)} (it was written by another train.py); "
                            f"move it away and the seed starts from the beginning")
        for name, piece in state.items():
            piece.load_state_dict(resume["state"][name])
    opt, shuffle, history = state["optimizer"], state["shuffle"].value, state["history"].value

    for epoch in tqdm(range(len(history), settings.epochs), desc=f"seed {seed}", initial=len(history),
                      total=settings.epochs, disable=None):
        best = min(history, key=lambda h: h["valid_mae"], default=None)    # the first of equals, as `improved`
        if best and len(history) - best["epoch"] >= settings.patience:
            break
        tic, sums = time.perf_counter(), {"loss": 0.0, "l1": 0.0, "con": 0.0}
        model.train()
        for batch in batches(train, settings.batch_size, shuffle):
            out = model(**model_inputs(batch, device, skipped))
            losses = model.objective(out, batch["label"].to(device))
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            for k in sums:
                sums[k] += losses[k].item() * len(batch["id"])
        if not math.isfinite(sums["loss"]):
            raise ValueError(f"seed {seed} diverged: the training loss became {sums['loss']} in epoch {epoch + 1}; "
                             f"lower --lr or --lambda-con")
        valid = evaluate(model, datasets["valid"], settings.batch_size, device, skipped)
        history.append({"epoch": epoch + 1, **{f"train_{k}": v / len(train) for k, v in sums.items()},
                        **{f"valid_{k}": v for k, v in valid.items()}, "seconds": time.perf_counter() - tic})
        improved = best is None or valid["mae"] < best["valid_mae"]
        if improved:
            save_checkpoint(os.path.join(folder, "best.pt"), model=model.state_dict(), epoch=epoch + 1, **keep)
        h = history[-1]
        tqdm.write(f"seed {seed} epoch {epoch + 1:3d} | train loss {h['train_loss']:.4f} (L1 {h['train_l1']:.4f}, "
                   f"con {h['train_con']:.4f}) | valid MAE {valid['mae']:.4f} Acc-2 {valid['acc2_non0']:.4f}"
                   f"{' *' if improved else ''} | {h['seconds']:.1f}s")
        sys.stdout.flush()   # one line per epoch also when the output goes to a log file
        save_checkpoint(os.path.join(folder, "last.pt"), state={k: v.state_dict() for k, v in state.items()}, **keep)
    return history


def new_model(config, seed, device="cpu"):
    """MIAR(config) with its initial weights drawn from `seed`."""
    torch.manual_seed(seed)
    return MIAR(config).to(device)


def report(model, datasets, settings, folder, history, device="cpu"):
    """The test metrics of folder/best.pt (test is touched here only, after training): valid, test, and
    test without each modality (is the model a text model in disguise?). Writes predictions.csv and the
    figures, then, last, the result with the run's record to folder/result.json (kept if it is there:
    the seed is finished, and only its other outputs were missing); returns the result."""
    best = load_checkpoint(os.path.join(folder, "best.pt"))
    model.load_state_dict(best["model"])
    skipped = [m for m in MODALITIES if m not in settings.modalities]
    pred, weights, label = predict(model, datasets["test"], settings.batch_size, device, skipped)
    result = {"valid": evaluate(model, datasets["valid"], settings.batch_size, device, skipped),
              "test": compute_metrics(pred, label),
              "test_drop": {m: evaluate(model, datasets["test"], settings.batch_size, device, sorted({m, *skipped}))
                            for m in settings.modalities},
              "best_epoch": best["epoch"], "epochs": len(history),
              "epoch_seconds": float(np.mean([h["seconds"] for h in history])), "seed": best["seed"],
              "torch": torch.__version__, "device": str(device), "config": best["record"]}
    write_predictions(os.path.join(folder, OUTPUTS[0]), datasets["test"].ids, label, pred, weights)
    plot_run(folder, history, pred, label, weights)
    if not os.path.isfile(os.path.join(folder, RESULT)):
        write_json(os.path.join(folder, RESULT), result)
    return result


# ----------------------------------------------------------------------------
# Command line: data flags (load_dataset's keywords), model and training flags from the two dataclasses, run flags

MAX_SEED = 2**32 - 1     # numpy's seed range
DATA_FLAGS = ("dataset", "data_path", "data_dir", "unaligned", "text_features", "synthetic_size", "synthetic_seed")
MODES = {"eval_only": (*DATA_FLAGS, "device", "batch_size", "drop_modality"), "compare": (),   # and what they take
         "check_data": DATA_FLAGS, "write_synthetic": ("synthetic_size", "synthetic_seed", "unaligned")}
WIDTHS = {f"{m}_dim" for m in MODALITIES}     # config fields that the data decides: no flags


def add_options(parser, title, cls):
    """One flag per field of a config dataclass: --field-name, typed by the field's annotation, with
    its default and help. A field that is neither an `option` nor a width fails here, loudly."""
    group, types = parser.add_argument_group(title), typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in WIDTHS:
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no flag: declare it with miar.option(default, help)")
        flag, kw = "--" + f.name.replace("_", "-"), dict(dest=f.name, help=f.metadata["help"])
        kind = typing.get_origin(types[f.name]) or types[f.name]
        if kind is bool:                 # a switch: --name turns it on, --no-name off
            group.add_argument(f"--no-{flag[2:]}" if f.default else flag, action=f"store_{not f.default}".lower(), **kw)
        elif kind is tuple:
            group.add_argument(flag, nargs="+", choices=f.metadata["choices"], default=list(f.default), **kw)
        else:
            group.add_argument(flag, type=kind, choices=f.metadata["choices"], default=f.default, **kw)


def from_args(cls, args):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in WIDTHS})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every default, except for switches and flags without one, where "(default: False)"
    or "(default: None)" would only confuse."""

    def _get_help_string(self, action):
        plain = action.default is None or isinstance(action.default, bool)
        return action.help if plain else super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(description="Train and evaluate MIAR on CMU-MOSI / CMU-MOSEI features.",
                                formatter_class=HelpFormatter)
    d = p.add_argument_group("data (load_dataset's keywords)")
    d.add_argument("--dataset", choices=["mosi", "mosei", "synthetic"], default="synthetic",
                   help="named dataset; mosi/mosei read MMSA's layout under --data-dir")
    d.add_argument("--data-path", help="explicit MMSA or MulT pickle (wins over --dataset; the file decides alignment)")
    d.add_argument("--data-dir", default="data", help="where mosi/mosei files live (MOSI/Processed/aligned_50.pkl ...)")
    d.add_argument("--unaligned", action="store_true", help="use unaligned_50.pkl (audio/vision at their own rate)")
    d.add_argument("--synthetic-size", choices=["mosi", "mosei", "tiny"], default="mosi",
                   help="split sizes and widths of --dataset synthetic (tiny: for tests and demos)")
    d.add_argument("--synthetic-seed", type=int, default=0, help="the seed of --dataset synthetic")
    d.add_argument("--text-features", help="pickle with another text model's 'text' for the same splits (any width)")
    d.add_argument("--check-data", action="store_true", help="no training: print what the data flags load, by split")
    d.add_argument("--write-synthetic", metavar="PATH", help="no training: write --dataset synthetic as an MMSA pickle")
    add_options(p, "training (TrainConfig)", TrainConfig)
    add_options(p, "model (MIARConfig)", MIARConfig)
    r = p.add_argument_group("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[1111], help="one run per seed; the field reports 1111-1115")
    r.add_argument("--out", help="run folder, runs/<dataset or file>: keeps finished seeds, goes on with stopped ones")
    r.add_argument("--resume", action="store_true", help="accepted for old scripts; a run always goes on (--out)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when available")
    r.add_argument("--eval-only", metavar="CKPT", help="evaluate a checkpoint on valid and test, no training; "
                   "on its own data, or on the data that data flags name (same widths)")
    r.add_argument("--drop-modality", nargs="+", choices=MODALITIES, default=[],
                   help="with --eval-only: zero and mask these modalities")
    r.add_argument("--compare", nargs="+", metavar="DIR", help="no training: run folders, each paired with the first")
    return p


def parse_args(argv):
    """The command line, checked: a bad value ends with one argparse error line. Adds `config`,
    `settings` and `given` (the flags typed, not defaulted)."""
    p = build_parser()
    args = p.parse_args(argv)
    quiet = build_parser()
    for a in quiet._actions:
        a.default = argparse.SUPPRESS
    args.given = {a.dest: a.option_strings[0] for a in p._actions if a.dest in vars(quiet.parse_args(argv))}
    for a in p._actions:      # float() accepts 'inf' and 'nan'; no flag means them
        if a.type is float and not math.isfinite(getattr(args, a.dest)):
            p.error(f"{a.option_strings[0]} must be a finite number, got {getattr(args, a.dest)}")
    if not all(0 <= s <= MAX_SEED for s in args.seeds) or len(set(args.seeds)) < len(args.seeds):
        p.error(f"--seeds must be different whole numbers from 0 to {MAX_SEED} (numpy's seed range), got {args.seeds}")
    for mode, takes in MODES.items():      # a flag that a mode would ignore is refused, never dropped silently
        ignored = [flag for dest, flag in args.given.items() if dest not in (mode, *takes)]
        if getattr(args, mode) and ignored:
            p.error(f"--{mode.replace('_', '-')} would ignore {', '.join(ignored)}; leave them out (it takes "
                    f"{', '.join('--' + d.replace('_', '-') for d in takes) or 'only run folders'})")
    if args.drop_modality and not args.eval_only:
        p.error("--drop-modality applies to --eval-only; a training run already reports test metrics without each "
                "modality (result.json 'test_drop'); to train without one, use --modalities")
    if args.unaligned and args.data_path:
        p.error("--unaligned picks the unaligned file of --dataset mosi/mosei; with --data-path the file itself says "
                "whether it is aligned. Leave --unaligned out")
    try:      # checked now, before any data is read; the widths come from the data later
        args.config, args.settings = from_args(MIARConfig, args), from_args(TrainConfig, args)
    except ValueError as e:
        p.error(str(e))
    if args.out is None:
        args.out = os.path.join("runs", args.dataset if args.data_path is None else
                                os.path.splitext(os.path.basename(args.data_path))[0])
    return args


def pick_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def eval_only(args, device):
    """Evaluate a checkpoint as trained, on its own data or on other data (same widths), always with
    the checkpoint's own normalisation statistics."""
    ckpt = load_checkpoint(args.eval_only)
    changes = {k: getattr(args, k) for k in DATA_FLAGS if k in args.given}
    if "dataset" in changes or "data_path" in changes:     # other data: none of the checkpoint's files apply
        changes = {"data_path": None, "text_features": None, **changes}
    model, datasets = model_and_data(ckpt, args.eval_only, device, changes)
    trained = ckpt["record"]["train"]["modalities"]
    drop = sorted(set(args.drop_modality) | {m for m in MODALITIES if m not in trained})
    results = {s: evaluate(model, datasets[s], args.batch_size, device, drop) for s in ("valid", "test")}
    without = f" without {', '.join(drop)}" if drop else ""
    print_table(f"{args.eval_only} on {datasets['test'].source}: test{without}", results["test"])
    return results


def train_seeds(args, device, argv):
    """Train every seed of the command into --out. A finished seed (its result.json is there) is kept,
    never replaced; a stopped one goes on from its last.pt; the folder takes seeds of one record only."""
    done, resume = prepare_out(args.out, args.seeds)      # --out and what it holds, before any data is read
    datasets = load_dataset(**{k: getattr(args, k) for k in DATA_FLAGS}, normalize=args.config.normalize)
    config = args.config.for_data(datasets)
    record = run_record(config, args.settings, datasets["train"])
    if config.lambda_con > 0 and min(args.settings.batch_size, len(datasets["train"])) < 2:
        raise DataError(f"batches of {min(args.settings.batch_size, len(datasets['train']))} utterance leave the "
                        f"contrastive loss no other utterance to tell apart (it would be 0); use --batch-size 2 or "
                        f"more and a train split of 2 or more, or --lambda-con 0")
    hold_to_record(args.out, record, resume)
    print(f"data: {datasets['train'].source} | train/valid/test {[len(d) for d in datasets.values()]} | "
          f"widths {datasets['train'].dims} | lengths {datasets['train'].lengths}")
    print(f"model: MIAR with {count_parameters(MIAR(config)):,} parameters on {device} | {config}")
    with contextlib.ExitStack() as claims:
        for seed in args.seeds:
            claim(os.path.join(args.out, f"seed_{seed}"), claims)
        for seed in args.seeds:
            folder = os.path.join(args.out, f"seed_{seed}")
            if seed in done and seed not in resume:      # finished, with all its outputs (or none to rebuild from)
                print(f"seed {seed}: finished before, kept ({folder}/{RESULT})")
                continue
            try:
                model = new_model(config, seed, device)
                history = fit(model, datasets, args.settings, seed, folder, device, resume.get(seed))
                result = report(model, datasets, args.settings, folder, history, device)
                summarise(args.out)
            except (KeyboardInterrupt, Stopped) as e:
                stop = e if isinstance(e, Stopped) else Stopped("interrupted (Ctrl-C)", 130)
                raise Stopped(stopped_message(stop, args.out, seed, argv), stop.code) from None
            print_table(f"seed {seed}: test (best valid epoch {result['best_epoch']})", result["test"])
            print("  without a modality (test MAE / Acc-2 non-0): " + ", ".join(
                f"-{m} {v['mae']:.3f} / {100 * v['acc2_non0']:.2f}" for m, v in result["test_drop"].items()))
    summary = summarise(args.out)
    print_table(f"test, mean ± std over {len(summary['seeds'])} seed(s) {sorted(map(int, summary['seeds']))}",
                summary["test_mean"], summary["test_std"])
    print(f"wrote {os.path.join(args.out, RESULTS)}")
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.compare:
            compare_runs(args.compare)
        elif args.check_data:
            summarise_data(load_dataset(**{k: getattr(args, k) for k in DATA_FLAGS}))
        elif args.write_synthetic:
            spec = (args.synthetic_size, args.unaligned, args.synthetic_seed)
            written(args.write_synthetic, lambda tmp: synthetic.write_pickle(tmp, *spec))    # whole or not at all
            print(f"wrote {args.write_synthetic} ({os.path.getsize(args.write_synthetic) / 2**20:.0f} MiB)")
        elif args.eval_only:
            eval_only(args, pick_device(args.device))
        else:
            train_seeds(args, pick_device(args.device), argv)
    except (DataError, ValueError) as e:    # ValueError: a diverged model, a bad config
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:       # Ctrl-C and SIGTERM arrive as Stopped (runs.on_signal)
        print(f"\n{e}", file=sys.stderr)
        return e.code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
