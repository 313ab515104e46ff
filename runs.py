"""
runs.py -- run folders and checkpoints: what train.py writes, how it is read back and compared.

    runs/synthetic/            --out: one or more commands with the same flags and data
      record.json              what runs here (model, settings, data fingerprint): written once, first
      results.json             summary: each seed's result, test mean ± std over the seeds
      seed_1111/               best.pt, last.pt (best valid MAE; the latest epoch, to go on from),
                               predictions.csv, three figures, and last of all result.json

Three invariants replace checks after the fact: every file appears whole or not at all (`written`);
record.json is written once and every run into the folder is held against it; a seed is finished
exactly when its result.json, its last file, exists."""
import contextlib
import csv
import fcntl
import json
import math
import os
import shlex
import signal
from dataclasses import fields

import numpy as np
import torch

from data import DataError, load_dataset, warn
from miar import MIAR, TOKENS, MIARConfig


class Stopped(Exception):
    """Training stopped from outside (Ctrl-C, SIGTERM) or because a file could not be written."""

    def __init__(self, why, code):
        super().__init__(why)
        self.code = code     # main's exit code: 128 + the signal's number (as shells report it), 1 for a write


def on_signal(signum, frame):
    """Ctrl-C, and SIGTERM (SLURM, `timeout`, `docker stop`): stop the run cleanly. A second signal while
    it stops is ignored, so that the stop itself is not cut short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped("interrupted (Ctrl-C)" if signum == signal.SIGINT else "stopped (SIGTERM)", 128 + signum)


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


CHECKPOINT_KEYS, LAST_KEYS = {"model", "record", "stats", "seed"}, {"state", "record", "stats", "seed"}   # best, last


def load_checkpoint(path, keys=CHECKPOINT_KEYS):
    if not os.path.isfile(path):
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:     # torch raises many types for a bad file
        raise DataError(f"{path} is not a MIAR checkpoint ({type(e).__name__}: {str(e)[:200]}); train it again")
    missing = keys - set(ckpt) if isinstance(ckpt, dict) else keys
    if missing:
        raise DataError(f"{path} is not a {'last.pt' if keys == LAST_KEYS else 'MIAR checkpoint'} written by "
                        f"this train.py: missing {sorted(missing)}; move it away and train again")
    return ckpt


def as_record(config):
    """A config dataclass as a dict, without its `neutral` fields that are at their default (miar.option)."""
    return {f.name: getattr(config, f.name) for f in fields(config)
            if not (f.metadata.get("neutral") and getattr(config, f.name) == f.default)}


def run_record(config, settings, train):
    """What ran: the model, the training settings and the data (how to load it, and its fingerprint),
    as JSON types. Checkpoints, result files and record.json carry it."""
    data = {**train.recipe, "fingerprint": train.fingerprint}
    return json.loads(json.dumps({"model": as_record(config), "train": as_record(settings), "data": data}))


def stats_to_tensors(stats):
    return None if stats is None else {m: {k: torch.as_tensor(v) for k, v in s.items()} for m, s in stats.items()}


def same_data(a, b):
    """Two fingerprints of one version compared; of two versions (data.fingerprint_of, "v2:..." against
    the older bare digits, or none at all) they cannot be, and count as the same: older folders stay usable."""
    version = lambda f: "none" if f is None else f.split(":")[0] if ":" in f else "v1"
    return a == b or version(a) != version(b)


def differences(had, now, where=False):
    """What differs between two run records: model, settings, and the data's fingerprint (not its
    path: the same file moved is the same data, a file rewritten in place is not). where=True: also
    how the data was loaded (its path, ...), which says more when the fingerprints cannot be compared."""
    parts = ("model", "train", "data") if where else ("model", "train")
    diff = [(f"{part}.{k}", had.get(part, {}).get(k, "(missing)"), now.get(part, {}).get(k, "(missing)"))
            for part in parts for k in {**had.get(part, {}), **now.get(part, {})} if k != "fingerprint"]
    prints = [r.get("data", {}).get("fingerprint") for r in (had, now)]
    diff += [] if same_data(*prints) else [("data.fingerprint", *prints)]
    return [f"{key}: {a!r} there, {b!r} here" for key, a, b in diff if a != b]


def model_and_data(ckpt, path, device="cpu", changes=None, verbose=True, model_class=MIAR, config_class=MIARConfig):
    """A checkpoint's model (eval mode) and its data, or the data that `changes` to its recipe name
    (other data), standardised with the checkpoint's own train statistics, never refitted. A fork
    passes its own model and config classes."""
    record = ckpt["record"]
    try:
        config = config_class(**record["model"])
        recipe = {**record["data"], **(changes or {})}
        fingerprint = recipe.pop("fingerprint")
        stats = {m: {k: v.numpy() for k, v in s.items()} for m, s in ckpt["stats"].items()} if ckpt["stats"] else None
        datasets = load_dataset(**recipe, stats=stats, verbose=verbose)
        model = model_class(config).to(device)
        model.load_state_dict(ckpt["model"])
    except DataError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as e:
        raise DataError(f"{path} does not fit this MIAR or its data ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        f"it was written by another version of miar.py, or the data's widths changed") from None
    if not changes and not same_data(fingerprint, datasets["train"].fingerprint):
        warn(f"the data at {recipe['data_path'] or recipe['dataset']} changed since {path} was trained "
             f"(fingerprint {fingerprint} then, {datasets['train'].fingerprint} now)")
    return model.eval(), datasets


def load_trained(path, device="cpu", verbose=False, model_class=MIAR, config_class=MIARConfig):
    """A trained run, ready to use: (model in eval mode, its data, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    return (*model_and_data(ckpt, path, device, verbose=verbose, model_class=model_class,
                            config_class=config_class), ckpt)


# ----------------------------------------------------------------------------
# A run folder: record.json, seed_<N>/ per seed, and results.json, their summary

RECORD, RESULT, RESULTS = "record.json", "result.json", "results.json"
METRICS = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc5", "acc7", "mae", "corr")   # what every result holds
OUTPUTS = ("predictions.csv", "learning_curves.png", "pred_vs_true.png", "token_weights.png")   # before RESULT
SEED_FILES = ("best.pt", "last.pt", *OUTPUTS, RESULT)


def read_result(path):
    """One seed's result.json, checked: the metrics are numbers (or null) and the record is there."""
    try:
        with open(path) as f:
            r = json.load(f)
        bad = [f"{part}.{k}" for part in ("valid", "test") for k in METRICS
               if r[part][k] is not None and (isinstance(r[part][k], bool) or not isinstance(r[part][k], (int, float)))]
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


def folder_record(out, seeds):
    """The folder's record.json, or for a folder written before record.json existed (or through the
    Python API), the record its finished seeds share; None for a folder without either."""
    path = os.path.join(out, RECORD)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                return json.load(f)
        except (ValueError, OSError) as e:
            raise DataError(f"{path} is damaged ({e}); move it away and the folder's seeds define it again") from None
    first = next(iter(seeds.values()), {"config": None})["config"]
    other = [s for s, r in seeds.items() if differences(first, r["config"])]
    if other:
        raise DataError(f"{out}: seeds {other} ran another configuration or data than seed {min(seeds)} "
                        f"({'; '.join(differences(first, seeds[other[0]]['config']))}); move them apart")
    return first


def hold_to_record(out, record, checkpoints={}):
    """Give the folder its record.json if it has none: the record its seeds share, or else `record`. Under
    the folder's lock, so that of two runs starting at once one writes it and the other is held against it.
    Then refuse `record` if the folder, or a {seed: last.pt} to go on from, ran another."""
    with locked(out):
        if not os.path.isfile(os.path.join(out, RECORD)):
            write_json(os.path.join(out, RECORD), folder_record(out, finished_seeds(out)) or record)
        had = {out: folder_record(out, {}), **{f"{out}/seed_{s}/last.pt": c["record"] for s, c in checkpoints.items()}}
    for where, other in had.items():
        diff = differences(other, record)
        if diff:
            raise DataError(f"{where} ran another configuration or other data ({'; '.join(diff)}); seeds of both "
                            f"would be averaged. Use the flags and data of that run, or another --out (to start "
                            f"over, delete {where})")


def metric(seeds, part, key):
    """{seed: that seed's `part` (valid or test) metric `key`}, NaN where undefined (null)."""
    return {s: math.nan if r[part][key] is None else r[part][key] for s, r in seeds.items()}


def summarise(out):
    """Rewrite out/results.json from the seed folders: each seed's result, and the mean and std over seeds.
    Under the folder's lock, so that two runs into one folder never write a summary that misses a seed."""
    with locked(out):
        seeds = finished_seeds(out)
        values = {k: list(metric(seeds, "test", k).values()) for k in METRICS}
        summary = {"seeds": {str(s): {k: v for k, v in r.items() if k != "config"} for s, r in seeds.items()},
                   "test_mean": {k: float(np.mean(v)) for k, v in values.items()},
                   "test_std": {k: float(np.std(v)) for k, v in values.items()},
                   "config": folder_record(out, seeds)}
        write_json(os.path.join(out, RESULTS), summary)
    return summary


def prepare_out(out, seeds):
    """--out checked before any data is read: a folder we can write to, whose finished seeds are
    readable, whose seed files are files, and whose last.pt of each seed still to do is that seed's.
    Returns (finished seeds, {seed: its last.pt, to go on from, or to rebuild missing outputs from})."""
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
        for path in (os.path.join(folder, name) for name in SEED_FILES):
            if os.path.isdir(path):
                raise DataError(f"{path} is a folder; expected the file that train.py writes there. Move it away")
    done, resume = finished_seeds(out), {}
    for seed in seeds:
        last = os.path.join(out, f"seed_{seed}", "last.pt")
        complete = seed in done and all(os.path.isfile(os.path.join(out, f"seed_{seed}", o)) for o in OUTPUTS)
        if os.path.isfile(last) and not complete:
            resume[seed] = load_checkpoint(last, LAST_KEYS)
            if resume[seed]["seed"] != seed:
                raise DataError(f"{last} holds the training of seed {resume[seed]['seed']}, not of seed {seed} (was it "
                                f"copied there?); move it away, and seed {seed} starts from the beginning")
    folder_record(out, done)         # a damaged record.json, or seeds of several records, before any data is read
    return done, resume


def claim(folder, stack):
    """Hold a lock on a seed's folder until the run ends: the same seed trained twice at once would
    overwrite its own checkpoints, so the second run is refused. Then no other run writes here, and
    the temporaries that a killed run left behind can go."""
    os.makedirs(folder, exist_ok=True)
    try:
        stack.enter_context(locked(folder, wait=False))
    except BlockingIOError:
        raise DataError(f"{folder} is being trained right now by another run; wait for it to end, or pick "
                        f"other --seeds or another --out") from None
    for name in os.listdir(folder):
        if name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))


# ----------------------------------------------------------------------------
# Predictions and figures of a seed, each written whole

CURVES = ([("train_loss", "train loss (L1 + λ·con)"), ("train_l1", "train L1"), ("valid_mae", "valid MAE")],
          [("valid_acc2_non0", "valid Acc-2 (non-0)"), ("valid_acc7", "valid Acc-7")])


def write_predictions(path, ids, label, pred, weights):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "prediction", *[f"w_{k}" for k in TOKENS]])
            for row in zip(ids, label, pred, *weights.T):
                w.writerow([row[0]] + [f"{v:.5f}" for v in row[1:]])
    written(path, write)


def plot_run(folder, history, pred, label, weights):
    """learning_curves.png, pred_vs_true.png, token_weights.png in folder. Figure objects, not pyplot:
    nothing changes the caller's backend (a notebook keeps its own plots), and no display is needed."""
    from matplotlib.figure import Figure
    curves, scatter, boxes = Figure(figsize=(9, 3.2)), Figure(figsize=(4, 4)), Figure(figsize=(5, 3.2))
    for ax, lines in zip(curves.subplots(1, 2), CURVES):
        for key, name in lines:
            ax.plot([h["epoch"] for h in history], [h[key] for h in history], label=name)
        ax.set_xlabel("epoch")
        ax.legend()
    ax = scatter.subplots()
    ax.scatter(label, pred, s=6, alpha=0.5)
    ax.plot([-3, 3], [-3, 3], "k--", lw=1)
    ax.set(xlabel="true sentiment", ylabel="predicted", title="test: predicted vs true")
    ax = boxes.subplots()
    ax.boxplot(weights, showfliers=False)
    ax.set_xticks(range(1, len(TOKENS) + 1), TOKENS)
    ax.set(ylabel="fusion weight α", title="test: per-sample token weights")
    for fig, name in zip((curves, scatter, boxes), OUTPUTS[1:]):
        fig.tight_layout()
        written(os.path.join(folder, name), lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def stopped_message(stop, out, seed, argv):
    """What a stop during `seed` leaves behind, and the command that goes on from there."""
    kept = sorted(finished_seeds(out))
    last = os.path.join(out, f"seed_{seed}", "last.pt")
    where = (f"seed {seed} is finished" if seed in kept else f"seed {seed} goes on from its last.pt"
             if os.path.isfile(last) else f"seed {seed} starts again")
    return (f"{stop} during seed {seed}. Finished seeds kept in {out}: {kept or 'none'}. "
            f"Go on with the same command ({where}):\n  {shlex.join(['python', 'train.py', *argv])}")
