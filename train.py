"""
train.py -- train MIAR and evaluate it with the field's metrics.

    python train.py --dataset synthetic                 # no download needed
    python train.py --dataset mosi --seeds 1111 1112 1113 1114 1115
    python train.py --eval-only runs/mosi/seed_1111/best.pt --drop-modality audio

One flat path: data -> model -> for each seed: epochs of (batches -> loss ->
step) -> valid MAE -> early stop -> best checkpoint -> test metrics of that
checkpoint. Model selection uses the valid split only; test is touched once,
after training, by the checkpoint with the best valid MAE.

Output folder (--out): results.json, and per seed best.pt / last.pt
(model + config + normalisation statistics + metrics), predictions.csv and
figures (learning curves, predicted vs true, token weights).
"""
import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from data import MODALITIES, DataError, load_dataset, warn
from miar import MIAR, MIARConfig, count_parameters

# ----------------------------------------------------------------------------
# Metrics, exactly as MMSA / MulT and nearly every paper compute them
# (README, "Metrics"). All are fractions; the printed tables show x100.

METRIC_NAMES = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7", "mae", "corr")


def weighted_f1(truth, guess):
    """F1 of a binary problem, averaged over the two classes weighted by their true
    support (sklearn's average='weighted'); a class never predicted has F1 0."""
    score = 0.0
    for cls in (False, True):
        tp = np.sum((guess == cls) & (truth == cls))
        fp = np.sum((guess == cls) & (truth != cls))
        fn = np.sum((guess != cls) & (truth == cls))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        score += f1 * np.sum(truth == cls)
    return float(score / len(truth))


def compute_metrics(pred, label):
    """Regression-protocol metrics of predictions `pred` against labels `label` ((N,) each)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    label = np.asarray(label, dtype=np.float64).reshape(-1)
    if pred.shape != label.shape or len(pred) == 0:
        raise ValueError(f"compute_metrics: pred has {pred.shape}, label {label.shape}; expected two equal, non-empty (N,)")
    if not (np.isfinite(pred).all() and np.isfinite(label).all()):
        raise ValueError("compute_metrics: non-finite predictions or labels; the model diverged or the data is broken")
    nonzero = label != 0      # "non-0": neutral utterances are dropped, then > 0 vs <= 0
    metrics = {
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
    return metrics


# ----------------------------------------------------------------------------
# Batches

BUCKET_BATCHES = 20   # training batches are formed from windows of this many batches


def spans(dataset):
    """(N,) frames up to the last real one, summed over modalities: what a sample costs."""
    t = dataset.tensors
    span = 0
    for m in MODALITIES:
        mask = t[f"{m}_mask"]
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
    Utterances of similar length share a batch, so little time goes to padding (unaligned
    MOSI-sized epochs: 11.9 s -> 7.6 s), while which utterances meet, and in which order the
    batches come, stays random from epoch to epoch."""
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
    if unknown:     # miar.py's short names ("t", "a", "v") would otherwise be ignored silently
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
        preds.append(out.pred.float().cpu()); weights.append(out.weights.float().cpu())
    return torch.cat(preds).numpy(), torch.cat(weights).numpy(), dataset.tensors["label"].numpy()


def evaluate(model, dataset, batch_size, device, drop=()):
    pred, _, label = predict(model, dataset, batch_size, device, drop)
    return compute_metrics(pred, label)


# ----------------------------------------------------------------------------
# Checkpoints: everything needed to evaluate or resume, loadable with weights_only

def save_checkpoint(path, **state):
    tmp = f"{path}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)    # atomic: a crash never leaves half a checkpoint
    except BaseException:        # Ctrl-C included: leave no temporary behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:     # torch raises many types for a bad file
        raise DataError(f"{path} is not a MIAR checkpoint ({type(e).__name__}: {str(e)[:200]})")
    missing = {"model", "config", "stats", "data", "modalities"} - set(ckpt) if isinstance(ckpt, dict) else {"everything"}
    if not missing and isinstance(ckpt["data"], dict):
        missing = {f"data.{k}" for k in DATA_FLAGS + ("normalize",) if k not in ckpt["data"]}
    if missing:
        raise DataError(f"{path} is not a MIAR checkpoint: missing {sorted(missing)}")
    return ckpt


def checkpoint_config(ckpt, path):
    """The checkpoint's MIARConfig, or a DataError saying why it is not one."""
    try:
        return MIARConfig(**ckpt["config"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: its model config does not fit this MIAR ({e}); "
                        f"it was written by another version of miar.py") from None


def stats_to_tensors(stats):
    return None if stats is None else {m: {k: torch.as_tensor(v) for k, v in s.items()} for m, s in stats.items()}


def stats_to_numpy(stats):
    return None if stats is None else {m: {k: v.numpy() for k, v in s.items()} for m, s in stats.items()}


def build_model(config, device, state_dict=None, where="checkpoint"):
    model = MIAR(config).to(device)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:
            raise DataError(f"{where} does not fit this MIAR ({str(e).splitlines()[0]}); "
                            f"it was written by another version of miar.py") from None
    return model


def check_dims(config, datasets, where):
    dims = datasets["train"].dims
    want = {"text": config.text_dim, "audio": config.audio_dim, "vision": config.vision_dim}
    if dims != want:
        raise DataError(f"{where} was trained on feature widths {want} but the data has {dims}; "
                        f"pass the data it was trained on (--dataset / --data-path / --text-features)")


def checkpoint_data(ckpt, changes=None, verbose=True):
    """The data a checkpoint was trained on (or that data with `changes` to its data flags),
    standardised with the checkpoint's own train statistics, never refitted."""
    d = {**ckpt["data"], **(changes or {})}
    return load_dataset(d["dataset"], d["data_path"], d["data_dir"], d["unaligned"], d["text_features"],
                        d["normalize"], stats=stats_to_numpy(ckpt["stats"]), synthetic_size=d["synthetic_size"],
                        verbose=verbose)


def model_and_data(ckpt, path, device, changes=None, verbose=True):
    """A loaded checkpoint's model (eval mode) and its data (see checkpoint_data), checked to fit."""
    config = checkpoint_config(ckpt, path)
    datasets = checkpoint_data(ckpt, changes, verbose)
    check_dims(config, datasets, path)
    return build_model(config, device, ckpt["model"], path).eval(), datasets


def load_trained(path, device="cpu", verbose=False):
    """A trained run, ready to use: (model in eval mode, its data, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    return (*model_and_data(ckpt, path, device, verbose=verbose), ckpt)


# ----------------------------------------------------------------------------
# Training one seed

def train_seed(args, config, datasets, seed, device, run_dir, resume=None, report=True):
    """Train with early stopping on valid MAE; returns valid/test metrics of the best checkpoint.
    report=False stops after training (best.pt and last.pt written; no test pass, no figures)."""
    os.makedirs(run_dir, exist_ok=True)
    best_path, last_path = os.path.join(run_dir, "best.pt"), os.path.join(run_dir, "last.pt")
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(config, device)
    # fused: one kernel for all parameters, ~5 % of an epoch on 2 CPU cores
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)
    shuffle = torch.Generator().manual_seed(seed)
    history, best_mae, bad_epochs, start = [], math.inf, 0, 0
    if resume is not None:     # continue exactly where last.pt stopped
        model.load_state_dict(resume["model"]); opt.load_state_dict(resume["optimizer"])
        shuffle.set_state(resume["shuffle_state"]); torch.set_rng_state(resume["torch_state"])
        history, best_mae, bad_epochs, start = resume["history"], resume["best_mae"], resume["bad_epochs"], resume["epoch"]
    common = dict(config=asdict(config), stats=stats_to_tensors(datasets["train"].stats), data=data_args(args),
                  modalities=list(args.modalities), seed=seed)
    skipped = [m for m in MODALITIES if m not in args.modalities]   # --modalities: trained without these

    epochs = tqdm(range(start, args.epochs), desc=f"seed {seed}", initial=start, total=args.epochs, disable=None)
    for epoch in epochs:
        if bad_epochs >= args.patience:
            break
        tic = time.perf_counter()
        model.train()
        sums = {"loss": 0.0, "l1": 0.0, "con": 0.0}
        for batch in tqdm(batches(datasets["train"], args.batch_size, shuffle), leave=False, disable=None,
                          total=math.ceil(len(datasets["train"]) / args.batch_size), desc=f"epoch {epoch + 1}"):
            out = model(**model_inputs(batch, device, skipped))
            losses = model.objective(out, batch["label"].to(device))
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            for k in sums:
                sums[k] += losses[k].item() * len(batch["id"])
        train = {k: v / len(datasets["train"]) for k, v in sums.items()}
        valid = evaluate(model, datasets["valid"], args.batch_size, device, skipped)
        seconds = time.perf_counter() - tic
        history.append({"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
                        **{f"valid_{k}": v for k, v in valid.items()}, "seconds": seconds})
        improved = valid["mae"] < best_mae
        if improved:
            best_mae, bad_epochs = valid["mae"], 0
            save_checkpoint(best_path, model=model.state_dict(), epoch=epoch + 1, metrics={"valid": valid}, **common)
        else:
            bad_epochs += 1
        tqdm.write(f"seed {seed} epoch {epoch + 1:3d} | train loss {train['loss']:.4f} (L1 {train['l1']:.4f}, "
                   f"con {train['con']:.4f}) | valid MAE {valid['mae']:.4f} Acc-2 {valid['acc2_non0']:.4f}"
                   f"{' *' if improved else ''} | {seconds:.1f}s")
        sys.stdout.flush()   # one line per epoch also when the output goes to a log file
        save_checkpoint(last_path, model=model.state_dict(), optimizer=opt.state_dict(), epoch=epoch + 1,
                        history=history, best_mae=best_mae, bad_epochs=bad_epochs, args=vars(args),
                        shuffle_state=shuffle.get_state(), torch_state=torch.get_rng_state(), **common)

    if not report:     # a caller that only wants the trained weights (notebook 04's short runs)
        return {"epochs": len(history), "epoch_seconds": float(np.mean([h["seconds"] for h in history]))}
    # test metrics of the best-valid checkpoint (selection never sees test)
    best = load_checkpoint(best_path)
    model.load_state_dict(best["model"])
    valid = evaluate(model, datasets["valid"], args.batch_size, device, skipped)
    pred, weights, label = predict(model, datasets["test"], args.batch_size, device, skipped)
    test = compute_metrics(pred, label)
    # how much does the model use each modality? (the pitfall: a text model in disguise)
    test_drop = {m: evaluate(model, datasets["test"], args.batch_size, device, sorted({m, *skipped}))
                 for m in MODALITIES if m not in skipped}
    result = {"valid": valid, "test": test, "test_drop": test_drop, "best_epoch": best["epoch"],
              "epochs": len(history), "epoch_seconds": float(np.mean([h["seconds"] for h in history]))}
    save_checkpoint(best_path, model=best["model"], epoch=best["epoch"], metrics=result, **common)
    write_predictions(os.path.join(run_dir, "predictions.csv"), datasets["test"].ids, label, pred, weights)
    plot_run(run_dir, history, pred, label, weights)
    return result


DATA_FLAGS = ("dataset", "data_path", "data_dir", "unaligned", "text_features", "synthetic_size")
PATH_FLAGS = ("data_path", "data_dir", "text_features", "out")
TRAINING_FLAGS = ("batch_size", "lr", "weight_decay", "patience", "grad_clip")


def data_args(args):
    """The data flags a checkpoint needs to rebuild its data alone, paths absolute (so that
    --eval-only works from any folder)."""
    values = {k: getattr(args, k) for k in DATA_FLAGS + ("normalize",)}
    return {k: os.path.abspath(v) if k in PATH_FLAGS and v is not None else v for k, v in values.items()}


def write_predictions(path, ids, label, pred, weights):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "prediction", "w_text", "w_audio", "w_vision", "w_joint"])
        for row in zip(ids, label, pred, *weights.T):
            w.writerow([row[0]] + [f"{v:.5f}" for v in row[1:]])


# ----------------------------------------------------------------------------
# The output folder: results.json merged seed by seed, so that nothing finished is lost to a
# Ctrl-C, a later run with other seeds, or a second run writing into the same --out at once

RESULTS, LOCK = "results.json", "results.json.lock"
MAX_SEED = 2**32 - 1    # numpy's seed range


def read_results(path):
    """An output folder's results.json, or None where there is none; anything else is an error."""
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder; expected the run's results file there. Move it away or pick another --out")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            results = json.load(f)
        if not isinstance(results.get("seeds"), dict):
            raise ValueError("no 'seeds'")
    except (ValueError, AttributeError, OSError) as e:    # ValueError: not JSON, not text
        raise DataError(f"{path} is not a results.json written by train.py ({type(e).__name__}: {e}); "
                        f"move it away or pick another --out") from None
    return results


def prepare_out(out):
    """--out checked before any data is read: a folder we can write to, with no results.json or a
    readable one (which is returned)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file; expected a folder (it is created when missing)")
    try:
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, LOCK), "a").close()
    except OSError as e:
        raise DataError(f"--out {out} cannot be written ({e.strerror}); pick a folder you can write to") from None
    return read_results(os.path.join(out, RESULTS))


@contextlib.contextmanager
def results_lock(out):
    """Held while results.json is read, merged and replaced (milliseconds), so that two runs into
    one --out (other seeds, in other processes or on other GPUs) never lose each other's seeds.
    flock is released when the file closes, and by the kernel when a process dies."""
    with open(os.path.join(out, LOCK), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def claim_seeds(out, seeds):
    """Hold seed_<seed>.lock for each seed of this run until it ends: the same seed trained twice at
    once into one folder would overwrite its own checkpoints, so the second run is refused."""
    claims = []
    for seed in seeds:
        f = open(os.path.join(out, f"seed_{seed}.lock"), "a")
        claims.append(f)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            for c in claims:
                c.close()
            raise DataError(f"seed {seed} is being trained right now by another run into {out} ({f.name} is "
                            f"held); wait for it to end, or pick other --seeds or another --out") from None
    return claims


def run_record(args, config):
    """results.json's 'config': what actually ran. The model as built, and the data (absolute paths)
    and training flags in effect, which after --resume are the checkpoint's, whatever the defaults say."""
    data = data_args(args)
    # flags that the data source does not read are left out, so that e.g. the same synthetic run
    # started from another folder (another absolute --data-dir) still merges
    unread = (("dataset", "data_dir", "unaligned", "synthetic_size") if data["data_path"] is not None else
              ("data_dir",) if data["dataset"] == "synthetic" else ("synthetic_size",))
    data = {k: v for k, v in data.items() if k not in unread}
    return {"model": asdict(config), "args": {**data, **{k: getattr(args, k) for k in TRAINING_FLAGS},
                                              "modalities": list(args.modalities)}}


def check_results(results, record, seeds, path):
    """Refuse to add seeds to a results.json whose other seeds ran another configuration: the mean
    over seeds would average two experiments. Names every difference."""
    others = sorted(set(results["seeds"]) - {str(s) for s in seeds}) if results else []
    if not others:
        return
    record, had = json.loads(json.dumps(record)), results.get("config") or {}     # lists, not tuples
    diff = [f"{part}.{k}: {had[part].get(k, '(missing)')!r} there, {v!r} here" if isinstance(had.get(part), dict)
            else f"{part}: missing there" for part in ("model", "args") for k, v in record[part].items()
            if not isinstance(had.get(part), dict) or had[part].get(k) != v]
    if diff:
        raise DataError(f"{path} holds seeds {others} of another configuration ({'; '.join(dict.fromkeys(diff))}); "
                        f"this run's seeds would be averaged with them. Pick another --out, or the flags of those seeds")


def without_nan(obj, found, where="results"):
    """obj with every non-finite float as None (JSON null; a bare NaN is not JSON); where they were goes to `found`."""
    if isinstance(obj, dict):
        return {k: without_nan(v, found, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_nan(v, found, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where)
        return None
    return obj


def write_json(path, obj):
    """Atomically, like save_checkpoint: readers see the old file or the new one, never half of one."""
    tmp = f"{path}.{os.getpid()}.tmp"      # per process: two runs may write at once
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_results(out, seed, result, record):
    """Merge one finished seed into out/results.json (under the lock: another run may have added its
    seeds since this one started) and recompute the mean and std over all seeds there. Undefined
    metrics (NaN: Corr of a constant prediction, non-0 scores when every label is 0) become null."""
    path = os.path.join(out, RESULTS)
    with results_lock(out):
        results = read_results(path) or {"seeds": {}}
        check_results(results, record, [seed], path)
        results["seeds"][str(seed)] = result
        tests = [r["test"] for r in results["seeds"].values()]
        values = {k: [math.nan if t.get(k) is None else t[k] for t in tests] for k in METRIC_NAMES}
        results["test_mean"] = {k: float(np.mean(v)) for k, v in values.items()}
        results["test_std"] = {k: float(np.std(v)) for k, v in values.items()}
        results["config"] = record
        nans = []
        write_json(path, without_nan(results, nans))
    if nans:
        warn(f"{len(nans)} metric(s) are undefined (NaN) and were written as null to {path}: {', '.join(nans)}. "
             f"Corr is undefined for a constant prediction, Acc-2/F1 non-0 when every label is 0")
    return results


class Interrupted(Exception):
    """Ctrl-C during training; the message says what was kept and how to go on."""


def interrupted(out, seed, seeds, started):
    """What a Ctrl-C during `seed` leaves: the finished seeds in results.json, and the command that goes on."""
    results = read_results(os.path.join(out, RESULTS))
    kept = f"{os.path.join(out, RESULTS)} keeps the finished seeds {sorted(results['seeds'])}" if results else \
        "no seed had finished, so there is no results.json"
    last = os.path.join(os.path.abspath(out), f"seed_{seed}", "last.pt")
    rest = seeds[seeds.index(seed) + 1:]
    if os.path.isfile(last) and os.path.getmtime(last) >= started:     # written by this run, not an older one
        how = f"Go on with:\n  python train.py --resume {last}" + (f"\n(it then trains seeds {rest})" if rest else "")
    else:
        how = (f"Seed {seed} stopped before its first epoch ended, so nothing of it was saved; run the same "
               f"command again with --seeds {' '.join(str(s) for s in [seed, *rest])}")
    return f"interrupted during seed {seed}; {kept}. {how}"


# ----------------------------------------------------------------------------
# Figures

TOKEN_NAMES = ("z_t", "z_a", "z_v", "z_g")


def plot_run(run_dir, history, pred, label, weights):
    """learning_curves.png, pred_vs_true.png, token_weights.png in run_dir.

    Figure objects, not pyplot: nothing changes the caller's backend, so a notebook that
    calls train.main still shows its own plots, and no display is needed."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.2)); ax = fig.subplots(1, 2)
    ax[0].plot(epochs, [h["train_loss"] for h in history], label="train loss (L1 + λ·con)")
    ax[0].plot(epochs, [h["train_l1"] for h in history], label="train L1")
    ax[0].plot(epochs, [h["valid_mae"] for h in history], label="valid MAE")
    ax[0].set_xlabel("epoch"); ax[0].legend()
    ax[1].plot(epochs, [h["valid_acc2_non0"] for h in history], label="valid Acc-2 (non-0)")
    ax[1].plot(epochs, [h["valid_acc7"] for h in history], label="valid Acc-7")
    ax[1].set_xlabel("epoch"); ax[1].legend()
    fig.tight_layout(); fig.savefig(os.path.join(run_dir, "learning_curves.png"), dpi=100)

    fig = Figure(figsize=(4, 4)); ax = fig.subplots()
    ax.scatter(label, pred, s=6, alpha=0.5)
    ax.plot([-3, 3], [-3, 3], "k--", lw=1)
    ax.set_xlabel("true sentiment"); ax.set_ylabel("predicted"); ax.set_title("test: predicted vs true")
    fig.tight_layout(); fig.savefig(os.path.join(run_dir, "pred_vs_true.png"), dpi=100)

    fig = Figure(figsize=(5, 3.2)); ax = fig.subplots()
    ax.boxplot(weights, showfliers=False)
    ax.set_xticks(range(1, 5), TOKEN_NAMES)
    ax.set_ylabel("fusion weight α"); ax.set_title("test: per-sample token weights")
    fig.tight_layout(); fig.savefig(os.path.join(run_dir, "token_weights.png"), dpi=100)


# ----------------------------------------------------------------------------
# Summary table

TABLE = [("Acc-2 has-0/non-0", ("acc2_has0", "acc2_non0")), ("F1 has-0/non-0", ("f1_has0", "f1_non0")),
         ("Acc-5", ("acc5",)), ("Acc-7", ("acc7",)), ("MAE", ("mae",)), ("Corr", ("corr",))]


def format_row(mean, std=None):
    """The field's columns: accuracies and F1 in %, MAE and Corr as fractions."""
    cells = []
    nan = lambda v: math.nan if v is None else v     # results.json writes an undefined metric as null
    for _, keys in TABLE:
        scale = 1 if keys[0] in ("mae", "corr") else 100
        fmt = "{:.3f}" if scale == 1 else "{:.2f}"
        parts = [fmt.format(nan(mean[k]) * scale) + (f"±{fmt.format(nan(std[k]) * scale)}" if std is not None else "")
                 for k in keys]
        cells.append(" / ".join(parts))
    return " | ".join(cells)


def print_table(title, mean, std=None):
    print(f"\n{title}\n" + " | ".join(name for name, _ in TABLE) + "\n" + format_row(mean, std))


def read_run(path):
    """A run folder (or its results.json) -> one row of `compare_runs`: name, seeds, test mean and
    std, mean valid MAE and test MAE per seed. Reading the fields is the schema check."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise DataError(f"no results.json at {file}; pass the --out folder of a finished run")
    try:
        with open(file) as f:
            r = json.load(f)
        seeds = sorted(r["seeds"])
        if not seeds:
            raise ValueError("no seeds")
        metrics = [k for _, keys in TABLE for k in keys]     # the table's columns must all be there
        row = {"seeds": seeds, "mean": {k: r["test_mean"][k] for k in metrics},
               "std": {k: r["test_std"][k] for k in metrics},
               "valid_mae": float(np.mean([r["seeds"][s]["valid"]["mae"] for s in seeds])),
               "test_mae": {s: r["seeds"][s]["test"]["mae"] for s in seeds}}
    except (ValueError, KeyError, TypeError) as e:   # ValueError: not JSON (or not text), no seeds
        raise DataError(f"{file} is not a results.json written by train.py ({type(e).__name__}: {e}); "
                        f"expected seeds -> valid/test metrics, test_mean and test_std")
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return {"name": os.path.basename(os.path.normpath(folder)), **row}


def compare_runs(paths):
    """One row per run folder (or results.json): its name, seeds, test mean and std, the mean
    valid MAE (what model selection sees), and, paired seed by seed with the *first* run, on how
    many shared seeds its test MAE is lower ("wins"): with MOSI-like seed swings, a mean gap
    means little unless the same seeds agree. This is how the README's tables are made:
    `python train.py --compare BASELINE RUN RUN ...`."""
    rows = [read_run(path) for path in paths]
    first = rows[0]
    for r in rows[1:]:
        shared = [s for s in r["seeds"] if s in first["test_mae"]]
        r["wins"] = (sum(r["test_mae"][s] < first["test_mae"][s] for s in shared), len(shared))
    width = max(len(r["name"]) for r in rows)
    print(f"{'run':{width}s} | seeds | " + " | ".join(name for name, _ in TABLE)
          + f" | valid MAE | test MAE lower than {first['name']}")
    for r in rows:
        wins = f"{r['wins'][0]} of {r['wins'][1]} seeds" if "wins" in r else "-"
        print(f"{r['name']:{width}s} | {len(r['seeds']):5d} | {format_row(r['mean'], r['std'])}"
              f" | {r['valid_mae']:.3f} | {wins}")
    return rows


# ----------------------------------------------------------------------------
# Command line

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every default, except for on/off switches (off unless given) and options
    without one, where "(default: False)" or "(default: None)" would only confuse."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The command line: every flag, its default and what it does (python train.py --help)."""
    p = argparse.ArgumentParser(description="Train and evaluate MIAR on CMU-MOSI / CMU-MOSEI features.",
                                formatter_class=HelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["mosi", "mosei", "synthetic"], default="synthetic",
                   help="named dataset; mosi/mosei read MMSA's layout under --data-dir")
    d.add_argument("--data-path", help="explicit MMSA or MulT pickle (wins over --dataset)")
    d.add_argument("--data-dir", default="data", help="where mosi/mosei files live (MOSI/Processed/aligned_50.pkl ...)")
    d.add_argument("--unaligned", action="store_true", help="use unaligned_50.pkl (audio/vision at their own frame rate)")
    d.add_argument("--synthetic-size", choices=["mosi", "mosei", "tiny"], default="mosi",
                   help="split sizes and widths of --dataset synthetic (tiny: for tests and demos)")
    d.add_argument("--text-features", help="pickle with another text model's 'text' for the same splits (any width)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=40, help="maximum epochs")
    t.add_argument("--batch-size", type=int, default=32, help="utterances per batch (also the InfoNCE candidates)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW decoupled weight decay")
    t.add_argument("--patience", type=int, default=10, help="early stop after this many epochs without a better valid MAE")
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm")
    t.add_argument("--seeds", type=int, nargs="+", default=[1111], help="one run per seed; the field reports 1111-1115")
    m = p.add_argument_group("model (MIARConfig)")
    m.add_argument("--d-model", type=int, default=MIARConfig.d_model, help="shared width of all modalities and tokens")
    m.add_argument("--heads", type=int, default=MIARConfig.heads, help="attention heads (must divide --d-model)")
    m.add_argument("--layers", type=int, default=MIARConfig.layers, help="unimodal encoder blocks")
    m.add_argument("--inter-layers", type=int, default=MIARConfig.inter_layers, help="interaction blocks per token")
    m.add_argument("--dropout", type=float, default=MIARConfig.dropout, help="dropout in projections, blocks and fusion")
    m.add_argument("--interaction", choices=["cross", "self"], default=MIARConfig.interaction,
                   help="cross: each modality token reads the other two; self: only its own (ablation)")
    m.add_argument("--lambda-con", type=float, default=MIARConfig.lambda_con, help="weight of the contrastive alignment loss (0 = off)")
    m.add_argument("--tau", type=float, default=MIARConfig.tau, help="InfoNCE temperature")
    m.add_argument("--align", choices=["tokens", "encoders"], default=MIARConfig.align,
                   help="what the contrastive loss aligns: the modality tokens z_t, z_a, z_v (method step 5), or the "
                        "pooled unimodal encodings before the interaction (no shared inputs)")
    m.add_argument("--pool", choices=["stats", "mean"], default=MIARConfig.pool,
                   help="what each token's query starts from: the mean, spread and peak of its modality's "
                        "frames, or their mean alone")
    m.add_argument("--no-center", dest="center", action="store_false",
                   help="feed audio/vision frames as they are only, not also as deviations from the utterance's mean")
    m.add_argument("--text-dropout", type=float, default=MIARConfig.text_dropout,
                   help="dropout on the text features before their projection")
    m.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="ablation: no feature standardisation and no LayerNorm at projection/fusion")
    e = p.add_argument_group("evaluation and output")
    e.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES),
                   help="train and evaluate with only these (e.g. 'text' for a text-only baseline)")
    e.add_argument("--drop-modality", nargs="+", choices=MODALITIES, default=[],
                   help="with --eval-only: zero and mask these modalities at evaluation")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when available")
    e.add_argument("--out", default=None, help="output folder; runs/<dataset> when not given")
    e.add_argument("--resume", metavar="CKPT", help="continue a stopped run from its last.pt")
    e.add_argument("--eval-only", metavar="CKPT", help="evaluate a saved checkpoint on valid and test, no training")
    e.add_argument("--compare", nargs="+", metavar="DIR",
                   help="print the test table (mean ± std) of finished runs, no training; also each run's "
                        "mean valid MAE and on how many seeds its test MAE is lower than the first run's")
    return p


def parse_args(argv):
    """Parse and check the command line; a bad value ends with one argparse error line."""
    p = build_parser()
    args = p.parse_args(argv)
    for action in p._actions:      # float() accepts 'inf' and 'nan'; no flag means them
        if action.type is float and not math.isfinite(getattr(args, action.dest)):
            p.error(f"{action.option_strings[0]} must be a finite number, got {getattr(args, action.dest)}")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not all(0 <= s <= MAX_SEED for s in args.seeds) or len(set(args.seeds)) < len(args.seeds):
        p.error(f"--seeds must be different whole numbers from 0 to {MAX_SEED} (numpy's seed range), got {args.seeds}")
    if sum(map(bool, (args.resume, args.eval_only, args.compare))) > 1:
        p.error("--resume, --eval-only and --compare are separate modes; give one of them")
    if args.drop_modality and not args.eval_only:
        p.error("--drop-modality applies to --eval-only; a training run already reports test metrics without "
                "each modality (results.json 'test_drop'); to train without one, use --modalities")
    if args.lr <= 0 or args.patience < 1 or args.grad_clip <= 0:
        p.error(f"need --lr > 0, --patience >= 1 and --grad-clip > 0; got {args.lr}, {args.patience}, {args.grad_clip}")
    try:    # model flags are checked by MIARConfig itself, before any data is read
        model_config(args, {m: 1 for m in MODALITIES})
    except ValueError as e:
        p.error(str(e))
    if args.out is None:
        args.out = os.path.join("runs", args.dataset if args.data_path is None else
                                os.path.splitext(os.path.basename(args.data_path))[0])
    # which flags were given (not defaulted): --resume and --eval-only refuse those the checkpoint decides
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    names = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    args.given = {dest: names[dest] for dest in vars(quiet.parse_args(argv))}
    return args


def refuse_conflicts(args, ckpt, path, allowed, resume):
    """Flags given on the command line that the checkpoint decides are named and refused, never
    ignored: a --resume continues the run as it was started, an --eval-only evaluates the model as trained."""
    had = {**ckpt.get("args", {}), **ckpt["data"], **ckpt["config"], "modalities": ckpt["modalities"]}
    if resume:                     # a last.pt: the run's folder is the one it lies in
        had["out"] = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    conflicts = []
    for dest, flag in getattr(args, "given", {}).items():
        mine, theirs = getattr(args, dest), had.get(dest, "(not used)")
        if dest in allowed or (mine == theirs if dest not in PATH_FLAGS or mine is None or theirs is None
                               else os.path.abspath(mine) == os.path.abspath(theirs)):
            continue
        value = "" if isinstance(mine, bool) else " " + " ".join(map(str, mine if isinstance(mine, list) else [mine]))
        conflicts.append(f"{flag}{value} (checkpoint: {theirs})")
    if conflicts:
        mode = "--resume continues the run as it was started" if resume else \
            "--eval-only evaluates the model as trained (it takes data flags, --batch-size and --drop-modality)"
        raise DataError(f"{path}: {mode}; these flags conflict with it: {', '.join(conflicts)}. Leave them out"
                        + (", or start a new run without --resume" if resume else ""))


def model_config(args, dims):
    """The CLI's model flags and the data's widths as one MIARConfig."""
    return MIARConfig(text_dim=dims["text"], audio_dim=dims["audio"], vision_dim=dims["vision"],
                      d_model=args.d_model, heads=args.heads, layers=args.layers, inter_layers=args.inter_layers,
                      dropout=args.dropout, interaction=args.interaction, tau=args.tau,
                      lambda_con=args.lambda_con, align=args.align, normalize=args.normalize,
                      pool=args.pool, center=args.center, text_dropout=args.text_dropout)


def pick_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def load_resume(args):
    """The last.pt of --resume, checked whole before any data is read; args become the run's own."""
    ckpt = load_checkpoint(args.resume)
    if "optimizer" not in ckpt:
        raise DataError(f"{args.resume} is a best.pt; resume from the run's last.pt")
    missing = [k for k in ("epoch", "history", "best_mae", "bad_epochs", "args", "shuffle_state", "torch_state", "seed")
               if k not in ckpt] or [f"args.{k}" for k in TRAINING_FLAGS + ("epochs",) if k not in ckpt["args"]]
    if missing:
        raise DataError(f"{args.resume} is not a complete last.pt: missing {missing}; start the run again")
    model = build_model(checkpoint_config(ckpt, args.resume), "cpu", ckpt["model"], args.resume)
    try:
        torch.optim.AdamW(model.parameters()).load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise DataError(f"{args.resume}: its optimizer state does not fit its model ({e}); start the run again") from None
    refuse_conflicts(args, ckpt, args.resume, allowed=("resume", "epochs", "device"), resume=True)
    for k, v in {**ckpt["config"], **ckpt["data"], **{k: ckpt["args"][k] for k in TRAINING_FLAGS}}.items():
        if hasattr(args, k):      # the data, model and training the run was started with
            setattr(args, k, v)
    if "epochs" not in getattr(args, "given", {}):
        args.epochs = ckpt["args"]["epochs"]
    args.modalities = ckpt["modalities"]
    args.out = os.path.dirname(os.path.dirname(os.path.abspath(args.resume)))
    return ckpt


def run(args):
    if args.compare:
        return compare_runs(args.compare)
    device = pick_device(args.device)
    if args.eval_only:
        return eval_only(args, device)
    resume = load_resume(args) if args.resume else None
    results = prepare_out(args.out)
    if resume is not None:    # its seed, then the seeds after it in the command it came from that have no result yet
        seed, seeds = resume["seed"], resume["args"].get("seeds", [resume["seed"]])
        later = seeds[seeds.index(seed) + 1:] if seed in seeds else []
        args.seeds = [seed] + [s for s in later if str(s) not in (results or {"seeds": {}})["seeds"]]
    claims = claim_seeds(args.out, args.seeds)
    try:
        return train_seeds(args, device, resume)
    finally:
        for claim in claims:
            claim.close()


def train_seeds(args, device, resume):
    """Load the data, build the model (or take the checkpoint's) and train each seed, merging its
    result into results.json as soon as it is done."""
    datasets = load_dataset(args.dataset, args.data_path, args.data_dir, args.unaligned,
                            args.text_features, args.normalize, synthetic_size=args.synthetic_size)
    dims = datasets["train"].dims
    if resume is not None:
        config = checkpoint_config(resume, args.resume)
        check_dims(config, datasets, args.resume)
    else:
        config = model_config(args, dims)
    print(f"data: {datasets['train'].source} | train/valid/test {[len(d) for d in datasets.values()]} | "
          f"widths {dims} | lengths {datasets['train'].lengths}")
    print(f"model: MIAR with {count_parameters(MIAR(config)):,} parameters on {device} | {config}")

    record = run_record(args, config)
    results_path = os.path.join(args.out, RESULTS)
    check_results(read_results(results_path), record, args.seeds, results_path)   # before any training
    for seed in args.seeds:
        run_dir, started = os.path.join(args.out, f"seed_{seed}"), time.time()
        try:
            r = train_seed(args, config, datasets, seed, device, run_dir,
                           resume if resume is not None and seed == resume["seed"] else None)
            results = save_results(args.out, seed, {**r, "max_epochs": args.epochs}, record)   # after every seed
        except KeyboardInterrupt:
            raise Interrupted(interrupted(args.out, seed, args.seeds, started)) from None
        print_table(f"seed {seed}: test (best valid epoch {r['best_epoch']})", r["test"])
        print("  without a modality (test MAE / Acc-2 non-0): " + ", ".join(
            f"-{m} {v['mae']:.3f} / {100 * v['acc2_non0']:.2f}" for m, v in r["test_drop"].items()))
    print_table(f"test, mean ± std over {len(results['seeds'])} seed(s) {sorted(results['seeds'])}",
                results["test_mean"], results["test_std"])
    print(f"wrote {results_path}")
    return results


def eval_only(args, device):
    """Evaluate a checkpoint on the data it was trained on, or on the data that data flags name
    (--dataset / --data-path ...: cross-dataset evaluation, same widths needed); always with the
    checkpoint's own normalisation statistics."""
    ckpt = load_checkpoint(args.eval_only)
    refuse_conflicts(args, ckpt, args.eval_only, allowed=DATA_FLAGS + ("eval_only", "device", "batch_size", "drop_modality"),
                     resume=False)
    changes, given = {}, getattr(args, "given", {})
    if "dataset" in given or "data_path" in given:    # other data: none of the checkpoint's files apply
        changes.update(data_path=None, text_features=None)
    changes.update({k: getattr(args, k) for k in DATA_FLAGS if k in given})
    model, datasets = model_and_data(ckpt, args.eval_only, device, changes)
    drop = sorted(set(args.drop_modality) | {m for m in MODALITIES if m not in ckpt["modalities"]})
    results = {split: evaluate(model, datasets[split], args.batch_size, device, drop) for split in ("valid", "test")}
    print_table(f"{args.eval_only} on {datasets['test'].source}: test" + (f" without {', '.join(drop)}" if drop else ""),
                results["test"])
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, ValueError) as e:    # ValueError: compute_metrics on a diverged model
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130                          # the shell's code for Ctrl-C
    except KeyboardInterrupt:
        print("\ninterrupted before training started; no results were written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
