"""
runs.py -- run folders and checkpoints: what train.py writes, and how it is read back.

    runs/synthetic/                 --out: one training command, or several with the same flags and data
      results.json                  summary: each seed's result, test mean ± std over the seeds
      seed_1111/
        best.pt  last.pt            checkpoints (best valid MAE; the latest epoch, for --resume)
        result.json                 this seed's metrics and `record` (what ran)
        predictions.csv  *.png      test predictions, learning curves, token weights

Every file is written whole or not at all (`written`), each seed's result as soon as it is finished,
and two commands writing into one folder at once keep each other's seeds. A folder only ever holds
seeds of one record (model, settings, data fingerprint): its mean over seeds is one experiment.
"""
import contextlib
import csv
import fcntl
import json
import math
import os
import shlex
from dataclasses import asdict

import numpy as np
import torch

from data import DataError, load_dataset, warn
from miar import MIAR, TOKENS, MIARConfig


class Stopped(Exception):
    """Training stopped from outside (Ctrl-C, SIGTERM) or because a file could not be written."""

    def __init__(self, why, code):
        super().__init__(why)
        self.code = code     # main's exit code: 128 + the signal's number (as shells report it), 1 for a write


def written(path, write):
    """write(tmp), then rename tmp to path: a reader sees the old file or the new one, never half of
    one, and a stop midway (Ctrl-C, SIGTERM, a full disk) leaves no temporary behind."""
    tmp = f"{path}.{os.getpid()}.tmp"       # per process: two runs may write into one folder
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:      # torch reports a full disk as a RuntimeError
        raise Stopped(f"cannot write {path} ({e}); is the disk full or the folder read-only?", 1) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, **state):
    written(path, lambda tmp: torch.save(state, tmp))


def write_json(path, obj):
    """obj as JSON; undefined metrics (NaN: Corr of a constant prediction, non-0 scores when every
    label is 0) are written as null, with a warning that says where."""
    nans = []

    def clean(x, where):
        if isinstance(x, dict):
            return {k: clean(v, f"{where}.{k}") for k, v in x.items()}
        if isinstance(x, float) and not math.isfinite(x):
            nans.append(where)
            return None
        return x
    obj = clean(obj, "")

    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    written(path, dump)
    if nans:
        warn(f"{len(nans)} undefined metric(s) (NaN) written as null to {path}: {', '.join(n[1:] for n in nans)}. "
             f"Corr is undefined for a constant prediction, Acc-2/F1 non-0 when every label is 0")


CHECKPOINT_KEYS = {"model", "record", "stats", "seed"}
RESUME_KEYS = {"optimizer", "history", "best_mae", "bad_epochs", "shuffle_state", "torch_state"}


def load_checkpoint(path, keys=CHECKPOINT_KEYS):
    if not os.path.isfile(path):
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:     # torch raises many types for a bad file
        raise DataError(f"{path} is not a MIAR checkpoint ({type(e).__name__}: {str(e)[:200]}); train it again")
    missing = keys - set(ckpt) if isinstance(ckpt, dict) else keys
    if missing:
        raise DataError(f"{path} is not a {'last.pt' if keys != CHECKPOINT_KEYS else 'MIAR checkpoint'} written by "
                        f"this train.py: missing {sorted(missing)}; train it again")
    return ckpt


def stats_to_tensors(stats):
    return None if stats is None else {m: {k: torch.as_tensor(v) for k, v in s.items()} for m, s in stats.items()}


def run_record(config, settings, train):
    """What ran: the model, the training settings and the data (how to load it, and its fingerprint),
    as JSON types. Checkpoints and result files carry it; a run folder holds seeds of one record."""
    data = {**train.recipe, "fingerprint": train.fingerprint}
    return json.loads(json.dumps({"model": asdict(config), "train": asdict(settings), "data": data}))


def differences(had, now):
    """What differs between two run records: model, settings, and the data's fingerprint (not its
    path: the same file moved is the same data, a file rewritten in place is not)."""
    keys = [("model", k) for k in now["model"]] + [("train", k) for k in now["train"]] + [("data", "fingerprint")]
    return [f"{part}.{k}: {had.get(part, {}).get(k, '(missing)')!r} there, {now[part][k]!r} here"
            for part, k in keys if had.get(part, {}).get(k) != now[part][k]]


def model_and_data(ckpt, path, device="cpu", changes=None, verbose=True):
    """A checkpoint's model (eval mode) and its data, or the data that `changes` to its recipe name
    (other data), standardised with the checkpoint's own train statistics, never refitted."""
    record = ckpt["record"]
    try:
        config = MIARConfig(**record["model"])
        recipe = {**record["data"], **(changes or {})}
        fingerprint = recipe.pop("fingerprint")
        stats = {m: {k: v.numpy() for k, v in s.items()} for m, s in ckpt["stats"].items()} if ckpt["stats"] else None
        datasets = load_dataset(**recipe, stats=stats, verbose=verbose)
        model = MIAR(config).to(device)
        model.load_state_dict(ckpt["model"])
    except DataError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as e:
        raise DataError(f"{path} does not fit this MIAR or its data ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        f"it was written by another version of miar.py, or the data's widths changed") from None
    if not changes and datasets["train"].fingerprint != fingerprint:
        warn(f"the data at {recipe['data_path'] or recipe['dataset']} changed since {path} was trained "
             f"(fingerprint {fingerprint} then, {datasets['train'].fingerprint} now)")
    return model.eval(), datasets


def load_trained(path, device="cpu", verbose=False):
    """A trained run, ready to use: (model in eval mode, its data, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    return (*model_and_data(ckpt, path, device, verbose=verbose), ckpt)


# ----------------------------------------------------------------------------
# A run folder: seed_<N>/ per seed, and results.json, their summary

RESULT, RESULTS = "result.json", "results.json"


def read_result(path):
    """One seed's result.json, checked: the metrics are numbers (or null) and the record is there."""
    try:
        with open(path) as f:
            r = json.load(f)
        bad = [f"{part}.{k}" for part in ("valid", "test") for k in METRICS
               if r[part][k] is not None and not isinstance(r[part][k], (int, float))]
        if bad:
            raise ValueError(f"{', '.join(bad)} are not numbers")
        if not isinstance(r["config"]["model"], dict) or not isinstance(r["config"]["train"], dict):
            raise TypeError("config.model and config.train are not dicts")
    except (ValueError, KeyError, TypeError, OSError) as e:   # ValueError: not JSON, not text, not a number
        raise DataError(f"{path} is not a result.json written by train.py ({type(e).__name__}: {e}); move its "
                        f"seed folder away, or pick another --out") from None
    return r


def finished_seeds(out):
    """{seed: result} of every seed folder in `out` that holds a result.json."""
    names = sorted(os.listdir(out)) if os.path.isdir(out) else []
    return {int(n[5:]): read_result(os.path.join(out, n, RESULT)) for n in names
            if n.startswith("seed_") and n[5:].isdigit() and os.path.isfile(os.path.join(out, n, RESULT))}


def metric(seeds, part, key):
    """{seed: that seed's `part` (valid or test) metric `key`}, NaN where undefined (null)."""
    return {s: math.nan if r[part][key] is None else r[part][key] for s, r in seeds.items()}


@contextlib.contextmanager
def locked(folder, wait=True):
    """An flock on the folder itself, held for the with-block: the kernel drops it when the process
    ends, however it ends, and no lock file is left behind."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)


def summarise(out):
    """Rewrite out/results.json from the seed folders: each seed's result, and the mean and std over seeds.
    Under the folder's lock, so that two runs into one folder never write a summary that misses a seed."""
    with locked(out):
        seeds = finished_seeds(out)
        values = {k: list(metric(seeds, "test", k).values()) for k in METRICS}
        summary = {"seeds": {str(s): {k: v for k, v in r.items() if k != "config"} for s, r in seeds.items()},
                   "test_mean": {k: float(np.mean(v)) for k, v in values.items()},
                   "test_std": {k: float(np.std(v)) for k, v in values.items()},
                   "config": seeds[max(seeds)]["config"]}
        write_json(os.path.join(out, RESULTS), summary)
    return summary


def prepare_out(out, seeds):
    """--out checked before any data is read: a folder we can write to, whose finished seeds are
    readable and whose seed_<N> are folders. Returns the finished seeds."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file; expected a folder (it is created when missing)")
    try:
        os.makedirs(out, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise DataError(f"--out {out} cannot be written ({e.strerror}); pick a folder you can write to") from None
    for folder in (os.path.join(out, f"seed_{s}") for s in seeds):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise DataError(f"{folder} is a file; expected the seed's folder there. Move it away or pick another --out")
    return finished_seeds(out)


def claim(folder, stack):
    """Hold a lock on a seed's folder until the run ends: the same seed trained twice at once would
    overwrite its own checkpoints, so the second run is refused."""
    os.makedirs(folder, exist_ok=True)
    try:
        stack.enter_context(locked(folder, wait=False))
    except BlockingIOError:
        raise DataError(f"{folder} is being trained right now by another run; wait for it to end, or pick "
                        f"other --seeds or another --out") from None


# ----------------------------------------------------------------------------
# Predictions and figures of a seed

def write_predictions(path, ids, label, pred, weights):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "prediction", *[f"w_{k}" for k in TOKENS]])
        for row in zip(ids, label, pred, *weights.T):
            w.writerow([row[0]] + [f"{v:.5f}" for v in row[1:]])


def plot_run(folder, history, pred, label, weights):
    """learning_curves.png, pred_vs_true.png, token_weights.png in folder. Figure objects, not pyplot:
    nothing changes the caller's backend (a notebook keeps its own plots), and no display is needed."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.2)); ax = fig.subplots(1, 2)
    for key, name in (("train_loss", "train loss (L1 + λ·con)"), ("train_l1", "train L1"), ("valid_mae", "valid MAE")):
        ax[0].plot(epochs, [h[key] for h in history], label=name)
    for key, name in (("valid_acc2_non0", "valid Acc-2 (non-0)"), ("valid_acc7", "valid Acc-7")):
        ax[1].plot(epochs, [h[key] for h in history], label=name)
    for a in ax:
        a.set_xlabel("epoch"); a.legend()
    fig.tight_layout(); fig.savefig(os.path.join(folder, "learning_curves.png"), dpi=100)

    fig = Figure(figsize=(4, 4)); ax = fig.subplots()
    ax.scatter(label, pred, s=6, alpha=0.5)
    ax.plot([-3, 3], [-3, 3], "k--", lw=1)
    ax.set_xlabel("true sentiment"); ax.set_ylabel("predicted"); ax.set_title("test: predicted vs true")
    fig.tight_layout(); fig.savefig(os.path.join(folder, "pred_vs_true.png"), dpi=100)

    fig = Figure(figsize=(5, 3.2)); ax = fig.subplots()
    ax.boxplot(weights, showfliers=False)
    ax.set_xticks(range(1, len(TOKENS) + 1), TOKENS)
    ax.set_ylabel("fusion weight α"); ax.set_title("test: per-sample token weights")
    fig.tight_layout(); fig.savefig(os.path.join(folder, "token_weights.png"), dpi=100)


# ----------------------------------------------------------------------------
# Tables

TABLE = [("Acc-2 has-0/non-0", ("acc2_has0", "acc2_non0")), ("F1 has-0/non-0", ("f1_has0", "f1_non0")),
         ("Acc-5", ("acc5",)), ("Acc-7", ("acc7",)), ("MAE", ("mae",)), ("Corr", ("corr",))]
METRICS = [k for _, keys in TABLE for k in keys]     # what every result must hold


def format_row(mean, std=None):
    """The field's columns: accuracies and F1 in %, MAE and Corr as fractions; null (undefined) as nan."""
    cells = []
    for _, keys in TABLE:
        scale, fmt = (1, "{:.3f}") if keys[0] in ("mae", "corr") else (100, "{:.2f}")
        show = lambda v: fmt.format((math.nan if v is None else v) * scale)
        cells.append(" / ".join(show(mean[k]) + (f"±{show(std[k])}" if std is not None else "") for k in keys))
    return " | ".join(cells)


def print_table(title, mean, std=None):
    print(f"\n{title}\n" + " | ".join(name for name, _ in TABLE) + "\n" + format_row(mean, std))


def compare_runs(paths):
    """One row per run folder: its seeds, test mean ± std, the mean valid MAE (what model selection
    sees), and, paired seed by seed with the *first* run, on how many shared seeds its test MAE is
    lower: with MOSI-like seed swings a mean gap means little unless the same seeds agree."""
    rows = []
    for path in paths:
        seeds = finished_seeds(path)
        if not seeds:
            raise DataError(f"no finished seed in {path} (seed_<N>/{RESULT}); pass the --out folder of a run")
        test = {k: list(metric(seeds, "test", k).values()) for k in METRICS}
        rows.append({"name": os.path.basename(os.path.normpath(path)), "seeds": seeds,
                     "mean": {k: float(np.mean(v)) for k, v in test.items()},
                     "std": {k: float(np.std(v)) for k, v in test.items()},
                     "valid_mae": float(np.mean(list(metric(seeds, "valid", "mae").values()))),
                     "test_mae": metric(seeds, "test", "mae")})
    width, first = max(len(r["name"]) for r in rows), rows[0]
    print(f"{'run':{width}s} | seeds | " + " | ".join(name for name, _ in TABLE)
          + f" | valid MAE | test MAE lower than {first['name']}")
    for r in rows:
        shared = [s for s in r["seeds"] if s in first["seeds"]]
        r["wins"] = (sum(r["test_mae"][s] < first["test_mae"][s] for s in shared), len(shared))
        wins = f"{r['wins'][0]} of {r['wins'][1]} seeds" if r is not first else "-"
        print(f"{r['name']:{width}s} | {len(r['seeds']):5d} | {format_row(r['mean'], r['std'])}"
              f" | {r['valid_mae']:.3f} | {wins}")
    return rows


def stopped_message(stop, out, seed, argv):
    """What a stop during `seed` leaves behind, and the command that goes on from there."""
    kept = sorted(finished_seeds(out))
    last = os.path.join(out, f"seed_{seed}", "last.pt")
    where = f"seed {seed} goes on from its last.pt" if os.path.isfile(last) else f"seed {seed} starts again"
    again = shlex.join(["python", "train.py", *[a for a in argv if a != "--resume"], "--resume"])
    return (f"{stop} during seed {seed}. Finished seeds kept in {out}: {kept or 'none'}. "
            f"Go on with ({where}):\n  {again}")


