"""
data.py -- CMU-MOSI / CMU-MOSEI precomputed features, and a synthetic stand-in.

Researchers bring the feature pickles everybody in the field uses:
  * MMSA (github.com/thuiar/MMSA): MOSI/Processed/aligned_50.pkl, unaligned_50.pkl
    {split: {"text" (N,50,768), "text_bert" (N,3,50), "audio" (N,L_a,d_a),
             "vision" (N,L_v,d_v), "audio_lengths", "vision_lengths",
             "regression_labels" (N,), "id" (N,), ...}}
  * MulT (github.com/yaohungt/Multimodal-Transformer): mosi_data.pkl, *_noalign.pkl
    {split: {"text" (N,50,300), "audio", "vision", "labels" (N,1,1), "id" (N,3)}}
The schema is detected from the keys. Every width and length is read from
the file, never assumed. `load_dataset` turns either into three torch
Datasets whose items are dicts of text/audio/vision (L, d) float32, boolean
*_mask (L,) with True = real frame, label (float) and id (str).

Clean-up (README, "Data"): non-finite values become 0 (MOSEI audio
holds -inf), then each modality is standardised per feature with statistics
of the *train* split's real frames only; valid/test use the same numbers.
Values far outside the train range are clipped first, so that one broken
frame cannot set a feature's scale (`fit_stats`). Each dataset carries a
`fingerprint` of the data it read (`fingerprint_of`).

No download is needed to try anything: `load_dataset("synthetic")` builds a
seeded dataset with MOSI's split sizes and widths whose labels follow a
story in which each modality carries part of the sentiment and one part is
only recoverable by combining text and audio (see `make_synthetic`).

    python data.py --summary --dataset mosi          # check your files
    python data.py --write-synthetic synth.pkl       # an MMSA-schema example
"""
import argparse
import hashlib
import os
import pickle
import sys

import numpy as np
import torch
from torch.utils.data import Dataset

from miar import MODALITIES     # the model's input names are the data's keys

SPLITS = ("train", "valid", "test")
CHUNK = 512       # samples per chunk in clean-up: no temporary the size of a whole split
MIN_STD = 1e-6    # features that are constant on train are left unscaled (std -> 1)
FENCE_TAIL = 0.001        # share of train values at either end left out when placing the fence (fit_stats)
FENCE_SAMPLE = 2 ** 24    # train values (frames x features) drawn to place the fence: bounded memory on MOSEI
FENCE_SEED = 0            # the draw is seeded: the same file always gets the same statistics
LABEL_RANGE = 3.0  # CMU-MOSI/MOSEI sentiment scores lie in [-3, 3]
FINGERPRINT_SAMPLES = 64   # samples per split whose features enter the fingerprint (fingerprint_of)
PER_SAMPLE_KEYS = ("id", "text_bert", "audio_lengths", "vision_lengths", "text_lengths")

# Where `--dataset mosi|mosei` looks inside --data-dir, in order: MMSA's layout
# first (the most used today), then MulT's file names.
DEFAULT_FILES = {
    ("mosi", False): ["MOSI/Processed/aligned_50.pkl", "mosi_data.pkl"],
    ("mosi", True): ["MOSI/Processed/unaligned_50.pkl", "mosi_data_noalign.pkl"],
    ("mosei", False): ["MOSEI/Processed/aligned_50.pkl", "mosei_senti_data.pkl"],
    ("mosei", True): ["MOSEI/Processed/unaligned_50.pkl", "mosei_senti_data_noalign.pkl"],
}


class DataError(ValueError):
    """A data file that is not what the loader expects; the message says what to do."""


def warn(message):
    """A warning the user cannot miss: on stderr, every time, whatever `verbose` says."""
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------
# Reading a pickle and checking its schema

# Everything MMSA and MulT pickles need, written by numpy 1.x (numpy.core) or 2.x (numpy._core),
# protocols 2 to 5: arrays are rebuilt by _reconstruct / _frombuffer from a dtype, numpy scalars
# by scalar(dtype, bytes), and protocol 2 writes bytes as _codecs.encode(str, 'latin1').
SAFE_GLOBALS = {("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))} | {
    (builtins, name) for builtins in ("builtins", "__builtin__")   # __builtin__: protocol 2's name for it
    for name in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                 "bool", "complex")}


class FeatureUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and nothing else.

    A pickle can name any function and have it called while loading (`__reduce__`), and feature
    files travel as download links: so every global outside SAFE_GLOBALS is refused, by name."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise DataError(
                f"{self.path}: refused to load: the pickle asks for '{module}.{name}', which a feature file "
                f"never holds (MMSA and MulT files hold numpy arrays, dicts, lists, strings and numbers). "
                f"Loading it could run code. If you made this file yourself, re-save it with plain numpy "
                f"arrays in dicts; otherwise do not use it")
        return super().find_class(module, name)


def read_pickle(path, what="feature file"):
    """Unpickle `path` with FeatureUnpickler, turning every way that can fail into a DataError."""
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = FeatureUnpickler(f, path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); "
                        f"expected a dict with 'train', 'valid' and 'test' as written by MMSA or MulT")
    if not isinstance(raw, dict) or not all(s in raw for s in SPLITS):
        found = sorted(raw.keys()) if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{path}: expected a dict with splits {list(SPLITS)}, found {found}")
    return raw


def default_path(name, data_dir, unaligned):
    """The first existing default file of `name` under data_dir, or a DataError saying where we looked."""
    candidates = [os.path.join(data_dir, f) for f in DEFAULT_FILES[(name, unaligned)]]
    for path in candidates:
        if os.path.isfile(path):
            return path
    kind = "unaligned_50.pkl" if unaligned else "aligned_50.pkl"
    raise DataError(
        f"no {name.upper()} features found; looked for: {', '.join(candidates)}. "
        f"Download {name.upper()}/Processed/{kind} from the MMSA project (github.com/thuiar/MMSA, "
        f"dataset links in its README) and put it under {data_dir}/ (or pass --data-dir DIR or "
        f"--data-path FILE). `--dataset synthetic` runs without any download.")


def detect_schema(split, where):
    """'mmsa' if the split has regression_labels, 'mult' if it has labels."""
    if "regression_labels" in split:
        return "mmsa"
    if "labels" in split:
        return "mult"
    raise DataError(f"{where}: no label key; expected 'regression_labels' (MMSA schema) or "
                    f"'labels' (MulT schema), found keys {sorted(split)}")


def _features(split, key, where):
    """split[key] as float32 (N, L, d), dropping the original so only one copy is alive."""
    if key not in split:
        raise DataError(f"{where}: missing key '{key}'; found keys {sorted(split)}")
    expected = "expected 3-D (N, length, features) numbers, every utterance padded to one length"
    try:
        x = np.asarray(split.pop(key))
        if x.dtype.kind in "USV":    # numpy would parse '1.5' as a number: a feature file never holds text
            raise TypeError(f"dtype {x.dtype}")
        if x.ndim == 3:
            x = x.astype(np.float32, copy=False)   # one cast, no copy when already float32
    except (TypeError, ValueError) as e:     # ragged lists, strings, objects that are not numbers
        raise DataError(f"{where}: '{key}' is not an array of numbers ({e}); {expected}")
    if x.ndim != 3:
        ragged = " (an object array: per-utterance arrays of different lengths?)" if x.dtype == object else ""
        raise DataError(f"{where}: '{key}' has shape {x.shape}{ragged}; {expected}")
    return x


def _chunks(n):
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def zero_rows_mask(x):
    """(N, L, d) -> (N, L) bool: frames with any non-zero value. Position-agnostic on
    purpose: MulT's unaligned files are left-padded (zeros first)."""
    mask = np.empty(x.shape[:2], dtype=bool)
    for sl in _chunks(len(x)):
        mask[sl] = (x[sl] != 0).any(-1)
    return mask


def lengths_mask(lengths, length, where):
    """(N,) valid-frame counts -> (N, L) bool; MMSA pads after the real frames."""
    try:
        lengths = np.asarray(lengths, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: not numbers ({e}); expected (N,) whole frame counts")
    fractional = lengths != np.round(lengths)    # NaN counts too; astype(int) would truncate silently
    if fractional.any():
        i = int(np.argmax(fractional))
        raise DataError(f"{where}: {int(fractional.sum())} lengths are not whole numbers (first: {lengths[i]} "
                        f"at index {i}); expected whole frame counts")
    lengths = lengths.astype(np.int64)
    if lengths.min(initial=0) < 0 or lengths.max(initial=0) > length:
        raise DataError(f"{where}: lengths range {lengths.min()}..{lengths.max()}, "
                        f"expected 0..{length} (the padded length)")
    return np.arange(length)[None, :] < lengths[:, None]


def text_mask_of(split, text, where):
    """Text padding mask: BERT's attention mask (text_bert row 1) if present, else non-zero rows."""
    if "text_bert" in split:
        try:
            bert = np.asarray(split["text_bert"], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: 'text_bert' is not numeric ({e}); expected (N, 3, length) numbers "
                            f"(token ids, attention mask, segment ids)")
        if bert.ndim != 3 or bert.shape[0] != len(text) or bert.shape[1] < 2 or bert.shape[2] != text.shape[1]:
            raise DataError(f"{where}: 'text_bert' has shape {bert.shape}; expected "
                            f"({len(text)}, 3, {text.shape[1]}) (token ids, attention mask, segment ids)")
        return bert[:, 1, :] > 0
    return zero_rows_mask(text)


def clean_nonfinite(x):
    """Replace NaN/+-inf with 0 in place, chunk by chunk; returns how many there were."""
    count = 0
    for sl in _chunks(len(x)):
        bad = ~np.isfinite(x[sl])
        n_bad = int(bad.sum())
        if n_bad:
            x[sl][bad] = 0.0
            count += n_bad
    return count


def convert_split(raw, name, source):
    """One split of a raw pickle -> dict of float32 features, bool masks, labels, ids.

    Pops the split out of `raw` and each array out of the split as it is
    converted: MOSEI unaligned takes most of a workstation's memory, so two copies must never coexist.
    """
    where = f"{source} [{name}]"
    split = raw.pop(name)
    if not isinstance(split, dict):
        raise DataError(f"{where}: expected a dict of arrays, found {type(split).__name__}")
    schema = detect_schema(split, where)
    out = {"nonfinite": {}}
    for key in MODALITIES:
        out[key] = _features(split, key, where)
        out["nonfinite"][key] = clean_nonfinite(out[key])

    n = len(out["text"])
    label_key = "regression_labels" if schema == "mmsa" else "labels"
    try:
        labels = np.asarray(split.pop(label_key), dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: '{label_key}' is not numeric ({e}); expected sentiment scores in [-3, 3]")
    if labels.ndim == 0 or labels.size != len(labels):   # MulT's (N, 1, 1) holds one score per sample too
        raise DataError(f"{where}: '{label_key}' has shape {labels.shape}; expected one sentiment score per "
                        f"sample, (N,) or MulT's (N, 1, 1). Pick the column that holds the score in [-3, 3]")
    labels = labels.reshape(-1)
    sizes = {"text": n, "audio": len(out["audio"]), "vision": len(out["vision"]), "labels": len(labels)}
    # every per-sample key read below must have N entries too: the Dataset takes its length from
    # 'id', and a short or long array would train on part of a split or fail with an IndexError
    sizes.update({k: _count(split[k]) for k in PER_SAMPLE_KEYS if k in split})
    if len(set(sizes.values())) != 1:
        raise DataError(f"{where}: sample counts differ across keys: {sizes}; expected one N for all")
    if n == 0:
        raise DataError(f"{where}: the split is empty (N = 0); expected at least one sample")
    if not np.isfinite(labels).all():
        raise DataError(f"{where}: {int((~np.isfinite(labels)).sum())} non-finite labels; expected finite values in [-3, 3]")
    outside = np.abs(labels) > LABEL_RANGE
    if outside.any():
        raise DataError(f"{where}: {int(outside.sum())} of {n} '{label_key}' lie outside [-3, 3] (range "
                        f"{labels.min():g}..{labels.max():g}); expected CMU-MOSI/MOSEI sentiment scores in [-3, 3]")
    out["label"] = labels

    out["id"] = ids_of(split, n, name)

    # Masks. Audio/vision follow the text mask when the file is word-aligned, i.e. all three share one
    # padded length and the file's own *_lengths (when present) count the same real frames as the text:
    # MMSA's aligned files store the text lengths there. Lengths that differ are the modality's own frame
    # counts, so they are honoured: an unaligned export may pad every modality to one length. (Were an
    # aligned file to store the padded length instead, honouring it still masks the padding: padding
    # frames are all-zero rows, masked below as blank.) Without lengths: non-zero rows.
    out["text_mask"] = text_mask_of(split, out["text"], where)
    text_lengths = out["text_mask"].sum(1)
    same_length = out["text"].shape[1] == out["audio"].shape[1] == out["vision"].shape[1]
    # A frame whose features are all exactly 0 inside the real length is a sensor that found
    # nothing (Facet and OpenFace write zero rows where no face was detected): missing evidence,
    # not a neutral face. Masked like padding, it enters neither the statistics nor the model.
    out["blank"] = {}
    follows_text = []
    for key in ("audio", "vision"):
        nonzero = zero_rows_mask(out[key])      # one pass: it is both the fallback mask and the blank test
        if f"{key}_lengths" in split:
            real = lengths_mask(split[f"{key}_lengths"], out[key].shape[1], f"{where} '{key}_lengths'")
            if same_length and np.array_equal(real.sum(1), text_lengths):
                real = out["text_mask"]
        else:
            real = out["text_mask"] if same_length else nonzero
        follows_text.append(real is out["text_mask"])
        out[f"{key}_mask"] = real & nonzero
        out["blank"][key] = int(real.sum() - out[f"{key}_mask"].sum())
    out["aligned"] = all(follows_text)
    out["generated_ids"] = "id" not in split     # split_i names: no evidence of leakage between splits
    return out


def _count(value):
    """Entries along the first axis (0 for a scalar), for the per-sample count check."""
    shape = np.shape(value)
    return shape[0] if shape else 0


def _str(x):
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def ids_of(split, n, name):
    """Utterance ids as str: MMSA 'video$_$clip'; MulT (N, 3) bytes rows joined by '_'."""
    if "id" not in split:
        return np.array([f"{name}_{i}" for i in range(n)])
    ids = np.asarray(split["id"])
    if ids.ndim == 2:
        return np.array(["_".join(_str(p) for p in row) for row in ids])
    return np.array([_str(i) for i in ids])


def swap_text(splits, path):
    """Replace the text modality with the features of another text model (any width).

    The file holds the same splits with a 'text' (N, L, d) array, optionally
    'id' (checked against the main file) and 'text_bert' / 'text_lengths' for
    the mask; without them, the main file's mask when the token length is the same. This is how
    MIAR's claim of working across text models is tested.
    """
    raw = read_pickle(path, what="text-feature file")
    guessed = []       # splits whose mask had to be guessed from non-zero rows
    for name in SPLITS:
        where = f"{path} [{name}]"
        split = raw.pop(name)
        if not isinstance(split, dict):
            raise DataError(f"{where}: expected a dict with 'text', found {type(split).__name__}")
        text = _features(split, "text", where)
        n = len(splits[name]["label"])
        counts = {"text": len(text), **{k: _count(split[k]) for k in PER_SAMPLE_KEYS if k in split}}
        for key, count in counts.items():
            if count != n:
                raise DataError(f"{where}: '{key}' has {count} samples; the main file's {name} split has {n}. "
                                f"The text-feature file must hold the same utterances in the same order")
        if "id" in split:
            ids = ids_of(split, n, name)
            if not (ids == splits[name]["id"]).all():
                first = int(np.argmax(ids != splits[name]["id"]))
                raise DataError(f"{where}: ids differ from the main file's, first at index {first}: "
                                f"{ids[first]!r} vs {splits[name]['id'][first]!r}; expected the same order")
        splits[name]["nonfinite"]["text"] += clean_nonfinite(text)
        if "text_lengths" in split:
            mask = lengths_mask(split["text_lengths"], text.shape[1], f"{where} 'text_lengths'")
        elif "text_bert" in split:
            mask = text_mask_of(split, text, where)
        elif text.shape[1] == splits[name]["text"].shape[1]:
            # same tokens padded to the same length: the main file's mask holds, and non-zero rows would
            # count BERT-like padding (non-zero vectors) as real tokens
            mask = splits[name]["text_mask"]
        else:
            mask = zero_rows_mask(text)
            guessed.append(f"{name} {text.shape[1]} vs {splits[name]['text'].shape[1]}")
        splits[name]["text"], splits[name]["text_mask"] = text, mask
    if guessed:
        warn(f"{path}: no 'text_lengths' or 'text_bert' and another token length than the main file's "
             f"({', '.join(guessed)}): real tokens are taken to be the non-zero rows, which counts padding as "
             f"real if the text model writes non-zero vectors there (BERT does). Add 'text_lengths' to the file")


def check_leakage(splits, source):
    """Warn when splits share utterances: an evaluation on seen data says nothing about generalisation."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            sa, sb = splits[a], splits[b]
            # array_equal compares shapes first: the text of splits of different sizes is never read
            if np.array_equal(sa["label"], sb["label"]) and np.array_equal(sa["text"], sb["text"]):
                warn(f"{source}: splits {a} and {b} are identical ({len(sa['label'])} samples with the same "
                     f"labels and text features); scores on {b} would measure memory, not generalisation. "
                     f"Check how the file was split")
                continue
            if sa["generated_ids"] or sb["generated_ids"]:     # made-up names: nothing to compare
                continue
            shared = np.intersect1d(sa["id"], sb["id"])
            if shared.size:
                warn(f"{source}: {shared.size} ids occur in both {a} and {b} (e.g. '{shared[0]}'); the same "
                     f"utterance in two splits leaks {a} into {b}. Check how the file was split")


def check_splits(splits, source):
    """What a model cannot learn from, checked once all splits are read: an error where the file is
    surely broken, a warning with a count where a run can still make sense (e.g. --modalities)."""
    widths = {name: {k: split[k].shape[-1] for k in MODALITIES} for name, split in splits.items()}
    for name in SPLITS[1:]:
        if widths[name] != widths["train"]:
            raise DataError(f"{source}: feature widths differ between splits: train {widths['train']}, "
                            f"{name} {widths[name]}; every split must hold the same features (re-export the file)")
    for name, split in splits.items():
        where = f"{source} [{name}]"
        for key in MODALITIES:
            x = split[key]
            if split["nonfinite"][key] == x.size:
                warn(f"{where}: '{key}' is non-finite everywhere ({x.size} values, set to 0); the model can "
                     f"learn nothing from it. Check the file, or train without it (--modalities)")
            elif not any(x[sl].any() for sl in _chunks(len(x))):
                warn(f"{where}: '{key}' is zero everywhere ({x.size} values); the model can learn nothing "
                     f"from it. Check the file, or train without it (--modalities)")
            elif key != "text" and not split[f"{key}_mask"].any():   # no text token at all is an error below
                unscaled = (": its statistics cannot be fitted, so it is left unscaled (mean 0, std 1) in "
                            "every split" if name == "train" else "")
                warn(f"{where}: '{key}' has no real frame in any of the {len(x)} samples ('{key}_lengths' or "
                     f"its mask are 0 everywhere){unscaled}. Check the file, or train without it (--modalities)")
        # aligned audio/vision follow the text mask, so a sample without a real token has no real frame at all
        empty = ~split["text_mask"].any(1)
        if empty.all():
            raise DataError(f"{where}: the text mask ('text_bert' row 1, 'text_lengths' or non-zero text rows) marks "
                            f"no real token in any of the {len(empty)} samples; expected 1 (or a length) for each "
                            f"real token. Check the file's 'text_bert' (token ids, attention mask, segment ids)")
        if empty.any():
            warn(f"{where}: {int(empty.sum())} of {len(empty)} samples have no real text token"
                 f"{' (and so no real audio/vision frame: the data is aligned)' if split['aligned'] else ''}; "
                 f"the model sees only padding for them. First: '{split['id'][int(np.argmax(empty))]}'")


# ----------------------------------------------------------------------------
# Standardisation with train statistics

def fit_stats(split):
    """Per-modality, per-feature statistics of the real frames of one split (train):
    {modality: {"mean", "std", "low", "high"}}, each (d,) float32.

    One frame of a broken sensor (1e30 in one COVAREP frame) would set a feature's std by itself and
    standardise every other value of that feature to ~0: the feature would be erased. So each feature
    gets a fence, [low, high]: the range of its train values without the FENCE_TAIL most extreme at
    either end, widened by that range's own width on each side. Values outside are clipped to the
    fence, in train before its mean and std and in every split when standardising. Clean data has
    nothing so far out and keeps its plain mean and std. A feature that is one value on nearly every
    frame has no width to measure "far" by and gets no fence (low, high = -inf, inf).
    """
    stats = {}
    rng = np.random.default_rng(FENCE_SEED)
    for key in MODALITIES:
        x, mask = split[key], split[f"{key}_mask"]
        d = x.shape[-1]
        sample = _sample_frames(x, mask, rng)
        if len(sample) == 0:      # no real frame (warned in check_splits): leave the modality unscaled
            stats[key] = _as_stats(np.zeros(d), np.ones(d), np.full(d, -np.inf), np.full(d, np.inf))
            continue
        # 'higher' / 'lower': never the most extreme value itself, however few frames there are
        lo = np.quantile(sample, FENCE_TAIL, axis=0, method="higher")
        hi = np.quantile(sample, 1 - FENCE_TAIL, axis=0, method="lower")
        width = hi - lo
        low = np.where(width > 0, lo - width, -np.inf)
        high = np.where(width > 0, hi + width, np.inf)
        total = np.zeros(d); total_sq = np.zeros(d); count = 0
        for sl in _chunks(len(x)):
            frames = np.clip(x[sl][mask[sl]].astype(np.float64), low, high)   # (frames, d)
            total += frames.sum(0); total_sq += (frames ** 2).sum(0); count += len(frames)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
        std[std < MIN_STD] = 1.0
        stats[key] = _as_stats(mean, std, low, high)
    return stats


def _as_stats(mean, std, low, high):
    return {name: np.asarray(v, dtype=np.float32) for name, v in
            (("mean", mean), ("std", std), ("low", low), ("high", high))}


def _sample_frames(x, mask, rng):
    """Real frames of x, each kept with one probability so that about FENCE_SAMPLE values are kept
    at most: quantiles need the values in memory, and MOSEI's are far more than needed."""
    keep = min(1.0, FENCE_SAMPLE / max(int(mask.sum()) * x.shape[-1], 1))
    parts = [np.zeros((0, x.shape[-1]), dtype=x.dtype)]
    for sl in _chunks(len(x)):
        frames = x[sl][mask[sl]]
        parts.append(frames[rng.random(len(frames)) < keep])
    return np.concatenate(parts)


def standardise(split, stats, where):
    """In place: clip real frames to the train fence, then (x - mean) / std; padding stays exactly 0.
    Returns {modality: (values clipped, frames with a clipped value)}."""
    clipped = {}
    for key in MODALITIES:
        x, mask = split[key], split[f"{key}_mask"]
        mean, std = (np.asarray(stats[key][s], dtype=np.float32) for s in ("mean", "std"))
        if mean.shape != (x.shape[-1],):
            raise DataError(f"{where}: '{key}' has {x.shape[-1]} features but the normalisation "
                            f"statistics have {mean.shape[0]}; the checkpoint was trained on other features")
        # statistics saved before fences existed have none: nothing is clipped
        low = np.asarray(stats[key].get("low", np.full_like(mean, -np.inf)), dtype=np.float32)
        high = np.asarray(stats[key].get("high", np.full_like(mean, np.inf)), dtype=np.float32)
        values = frames = 0
        for sl in _chunks(len(x)):
            chunk = x[sl]
            outside = ((chunk < low) | (chunk > high)) & mask[sl][..., None]
            values += int(outside.sum()); frames += int(outside.any(-1).sum())
            np.clip(chunk, low, high, out=chunk)
            chunk -= mean
            chunk /= std
            chunk[~mask[sl]] = 0.0
        clipped[key] = (values, frames)
    return clipped


# ----------------------------------------------------------------------------
# The torch Dataset

class FeatureDataset(Dataset):
    """One split: index with an int for one utterance or with a list of ints for a batch."""

    def __init__(self, split, stats=None, source="", fingerprint=None, recipe=None):
        self.tensors = {k: torch.from_numpy(split[k]) for k in
                        ("text", "audio", "vision", "text_mask", "audio_mask", "vision_mask", "label")}
        self.ids = split["id"]
        self.stats = stats          # the train statistics applied (None: not standardised)
        self.aligned = split["aligned"]
        self.source = source
        self.fingerprint = fingerprint   # of the data as read, the same on all splits (see fingerprint_of)
        self.recipe = recipe             # load_dataset's arguments, paths absolute: how to load this data again
        self.dims = {k: self.tensors[k].shape[-1] for k in MODALITIES}
        self.lengths = {k: self.tensors[k].shape[1] for k in MODALITIES}

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        item = {k: v[index] for k, v in self.tensors.items()}
        item["id"] = self.ids[index].tolist() if not isinstance(index, int) else str(self.ids[index])
        return item


def load_dataset(dataset="synthetic", data_path=None, data_dir="data", unaligned=False,
                 text_features=None, normalize=True, stats=None, synthetic_size="mosi",
                 synthetic_seed=0, verbose=True):
    """{'train', 'valid', 'test'} FeatureDatasets from a named dataset or a pickle path.

    dataset: 'mosi' | 'mosei' (default files under data_dir) | 'synthetic' (built in).
    data_path: an explicit MMSA/MulT pickle; always wins over name.
    text_features: a pickle with the same splits holding another text model's 'text'.
    normalize: standardise with train statistics (False: the ablation).
    stats: statistics to apply instead of fitting them (evaluation of a checkpoint).
    """
    # how to load this data again, paths absolute: a checkpoint keeps it to rebuild its data alone
    recipe = dict(dataset=dataset, data_path=data_path, data_dir=data_dir, unaligned=unaligned,
                  text_features=text_features, normalize=normalize, synthetic_size=synthetic_size,
                  synthetic_seed=synthetic_seed)
    recipe.update({k: os.path.abspath(recipe[k]) for k in ("data_path", "data_dir", "text_features") if recipe[k]})
    name = dataset
    if data_path is not None:
        source = data_path
        raw = read_pickle(data_path)
    elif name == "synthetic":
        source = f"synthetic ({synthetic_size}{', unaligned' if unaligned else ''}, seed {synthetic_seed})"
        raw = make_synthetic(synthetic_size, unaligned, synthetic_seed)
    elif (name, unaligned) in DEFAULT_FILES:
        source = default_path(name, data_dir, unaligned)
        raw = read_pickle(source)
    else:
        raise DataError(f"unknown dataset {name!r}; expected 'mosi', 'mosei' or 'synthetic' (or a --data-path)")

    splits = {name_: convert_split(raw, name_, source) for name_ in SPLITS}
    del raw
    if text_features is not None:
        swap_text(splits, text_features)
    check_splits(splits, source)
    check_leakage(splits, source)
    bad = {k: sum(s["nonfinite"][k] for s in splits.values()) for k in MODALITIES}
    if verbose and any(bad.values()):
        print("data: replaced non-finite values with 0: " +
              ", ".join(f"{k} {v}" for k, v in bad.items() if v))
    blank = {k: sum(s["blank"][k] for s in splits.values()) for k in ("audio", "vision")}
    if verbose and any(blank.values()):
        print("data: masked frames whose features are all 0 (the sensor found nothing, e.g. no face): " +
              ", ".join(f"{k} {v}" for k, v in blank.items() if v))
    fingerprint = fingerprint_of(splits)
    if normalize:
        stats = stats if stats is not None else fit_stats(splits["train"])
        clipped = {name_: standardise(split, stats, f"{source} [{name_}]") for name_, split in splits.items()}
        far = [f"{name_} {key} {v} value{'s' * (v != 1)} in {f} frame{'s' * (f != 1)}"
               for name_, counts in clipped.items() for key, (v, f) in counts.items() if v]
        if far:
            warn(f"{source}: clipped values far outside the train values' range to its fence (the range "
                 f"widened by its own width on each side), so that no single frame sets a feature's scale: "
                 f"{'; '.join(far)}. Many such values point to a broken feature extraction")
    else:
        stats = None
    return {name_: FeatureDataset(split, stats, source, fingerprint, recipe) for name_, split in splits.items()}


def fingerprint_of(splits):
    """A cheap identity of the data as read: 16 hex digits of a sha256.

    Covers, per split in order: the sample count; each modality's shape (N, length, width) and its
    real-frame mask; the labels; the ids; and the features of every k-th sample (k chosen so that
    about FINGERPRINT_SAMPLES per split are read whatever the split's size). Taken after the
    non-finite clean-up and the text swap, before standardisation: a changed label, id, length,
    text model or re-extraction changes it; normalisation choices do not. A change confined to the
    features of samples that are not read goes unseen (the price of not hashing gigabytes)."""
    h = hashlib.sha256()
    for name in SPLITS:
        split = splits[name]
        n = len(split["label"])
        step = max(1, n // FINGERPRINT_SAMPLES)
        h.update(f"{name} {n} {[split[k].shape for k in MODALITIES]}".encode())
        h.update(np.ascontiguousarray(split["label"]).tobytes())
        h.update("\n".join(split["id"].tolist()).encode())
        for key in MODALITIES:
            h.update(np.packbits(split[f"{key}_mask"]).tobytes())
            h.update(np.ascontiguousarray(split[key][::step]).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# Synthetic data: a story with real cross-modal structure
#
# Each utterance gets a sentiment y drawn from the real CMU-MOSI label
# distribution, and each modality tells part of it:
#   text   -- a few "sentiment words" carry the *apparent* polarity along one
#             direction of a 768-d BERT-like space; the rest is noise.
#   audio  -- loudness over all frames grows with |y| (weak per frame: evidence
#             that must be pooled over time); a SARCASM_RATE share of
#             utterances are sarcastic: their words say the opposite of y,
#             and a single-frame pitch burst is the only trace of it.
#   vision -- on a random share of frames a smile/frown unit moves with sign(y)
#             (spread-out, weak evidence of the polarity).
# So y (sign times size) is only recoverable by combining modalities: the size
# comes from audio pooled over time and from the words, the sign from vision
# pooled over time or from the words corrected by the audio burst ("the words
# say X unless the tone says otherwise"). What the trained model really uses is
# measured, not assumed: RESULTS.md (Notebook investigations) and notebooks 05 and 06.
# Raw feature scales differ by orders of magnitude across and within the
# modalities (like COVAREP and Facet), so standardisation matters.

# Counts of the real CMU-MOSI labels (all 2199 utterances of the standard split,
# as distributed with the features) rounded to the 0.2 grid -3.0, -2.8, ..., 3.0.
MOSI_LABEL_COUNTS = [12, 32, 36, 42, 63, 103, 76, 101, 81, 79, 110, 76, 58, 89, 65, 96,
                     73, 80, 65, 81, 62, 75, 96, 93, 98, 120, 96, 56, 44, 29, 12]
LABEL_GRID = np.round(np.linspace(-3, 3, len(MOSI_LABEL_COUNTS)), 1)
SYNTHETIC_SIZES = {   # split sizes, widths, unaligned lengths of the real datasets
    "mosi": dict(n=(1284, 229, 686), dims=(768, 5, 20), unaligned=(375, 500)),
    "mosei": dict(n=(16326, 1871, 4659), dims=(768, 74, 35), unaligned=(500, 500)),
    "tiny": dict(n=(96, 48, 48), dims=(32, 5, 20), unaligned=(75, 100)),   # tests, quick demos
}
TEXT_LEN = 50            # MMSA's padded token length
MIN_WORDS = 10           # shortest utterance, in tokens
SENTIMENT_WORDS = 3      # words that carry the apparent polarity
TEXT_NOISE = 0.5         # std of BERT-like background features
TEXT_SIGNAL = 6.0        # sentiment-word shift per unit of apparent polarity / 3: strong enough that text
                         # alone learns the apparent polarity, which sarcasm then caps below what fusion reaches
SARCASM_RATE = 0.2       # share of non-neutral utterances whose words lie
PITCH_BURST = 4.0        # size (in noise stds) of the one-frame sarcasm cue, audio features 0 and 1
LOUDNESS = 1.0           # per-frame loudness shift at |y| = 3, audio feature 2 (noise std 1)
EXPRESSIVE_RATE = 0.4    # share of frames with a visible expression
SMILE = 0.8              # per-frame smile/frown shift, vision feature 0 (noise std 1)
NONFINITE_RATE = 0.002   # -inf entries in audio feature 3, as in MOSEI's COVAREP


def _raw_scales(d, low, high):
    """Per-feature (scale, offset): scales spread log-uniformly over [10^low, 10^high]."""
    scale = np.logspace(low, high, d).astype(np.float32)
    return scale, (3 * scale).astype(np.float32)


def _synthetic_split(n, dims, lengths, rng, direction, split_name):
    d_t, d_a, d_v = dims
    len_a, len_v = lengths
    y = rng.choice(LABEL_GRID, size=n, p=np.array(MOSI_LABEL_COUNTS) / sum(MOSI_LABEL_COUNTS)).astype(np.float32)
    words = rng.integers(MIN_WORDS, TEXT_LEN + 1, size=n)             # real tokens per utterance
    sarcastic = (rng.random(n) < SARCASM_RATE) & (y != 0)
    apparent = np.where(sarcastic, -y, y)
    rows = np.arange(n)

    # text: BERT-like noise everywhere (BERT gives non-zero vectors at padding
    # too, so the mask must come from text_bert, as in MMSA's files)
    text = rng.standard_normal((n, TEXT_LEN, d_t), dtype=np.float32) * TEXT_NOISE
    for _ in range(SENTIMENT_WORDS):
        pos = (rng.random(n) * words).astype(int)
        text[rows, pos] += (TEXT_SIGNAL * apparent / 3)[:, None] * direction
    text_mask = np.arange(TEXT_LEN)[None] < words[:, None]

    # audio / vision frames: word-aligned (same length as text) or at their own rate
    n_a = np.ceil(words * len_a / TEXT_LEN).astype(int)
    n_v = np.ceil(words * len_v / TEXT_LEN).astype(int)
    # per-frame cues shrink by sqrt(frames per word) in unaligned data, so that the evidence
    # pooled over an utterance is the same whatever the frame rate
    per_frame_a, per_frame_v = np.sqrt(TEXT_LEN / len_a), np.sqrt(TEXT_LEN / len_v)
    audio = rng.standard_normal((n, len_a, d_a), dtype=np.float32)
    audio[:, :, 2] += (per_frame_a * LOUDNESS * np.abs(y) / 3)[:, None]
    burst = (rng.random(n) * n_a).astype(int)
    audio[rows[sarcastic], burst[sarcastic], :2] += PITCH_BURST
    vision = rng.standard_normal((n, len_v, d_v), dtype=np.float32)
    expressive = rng.random((n, len_v)) < EXPRESSIVE_RATE
    vision[:, :, 0] += expressive * (per_frame_v * SMILE * np.sign(y))[:, None]

    for x, lo, hi in ((audio, -2, 2), (vision, -1, 3)):   # COVAREP / Facet-like raw units
        scale, offset = _raw_scales(x.shape[-1], lo, hi)
        x *= scale
        x += offset
    audio[:, :, 3][rng.random((n, len_a)) < NONFINITE_RATE] = -np.inf
    audio[np.arange(len_a)[None] >= n_a[:, None]] = 0.0     # zero padding after the real frames
    vision[np.arange(len_v)[None] >= n_v[:, None]] = 0.0

    cls = np.sign(y).astype(np.int64) + 1
    return {
        "id": np.array([f"{split_name}{i // 4:04d}$_${i % 4}" for i in range(n)]),
        "raw_text": np.array(["<synthetic utterance>"] * n),
        "text": text,
        "text_bert": np.stack([np.zeros_like(text_mask, dtype=np.float32), text_mask.astype(np.float32),
                               np.zeros_like(text_mask, dtype=np.float32)], axis=1),
        "audio": audio, "vision": vision,
        "audio_lengths": n_a.tolist(), "vision_lengths": n_v.tolist(),
        "regression_labels": y,
        "classification_labels": cls,
        "annotations": np.array(["Negative", "Neutral", "Positive"])[cls],
        "sarcastic": sarcastic,   # not in MMSA's files: the story's hidden variable, for notebooks
    }


def make_synthetic(size="mosi", unaligned=False, seed=0):
    """A seeded MMSA-schema dict {train, valid, test} following the story above."""
    if size not in SYNTHETIC_SIZES:
        raise DataError(f"unknown synthetic size {size!r}; expected one of {sorted(SYNTHETIC_SIZES)}")
    spec = SYNTHETIC_SIZES[size]
    lengths = spec["unaligned"] if unaligned else (TEXT_LEN, TEXT_LEN)
    direction = np.random.default_rng(seed).standard_normal(spec["dims"][0]).astype(np.float32)
    direction /= np.linalg.norm(direction) / np.sqrt(TEXT_NOISE * 2)   # a shift that stands out of the noise
    return {name: _synthetic_split(n, spec["dims"], lengths, np.random.default_rng([seed, i]), direction, name)
            for i, (name, n) in enumerate(zip(SPLITS, spec["n"]))}


# ----------------------------------------------------------------------------
# Command line: write the synthetic data as a pickle, or summarise a dataset

def summarise(datasets):
    for name, ds in datasets.items():
        t = ds.tensors
        frames = ", ".join(f"{k} {tuple(t[k].shape[1:])} real {t[k + '_mask'].float().mean():.0%}" for k in MODALITIES)
        print(f"{name:5s} N={len(ds):6d}  {frames}  label mean {t['label'].mean():+.2f} std {t['label'].std():.2f}")
    print(f"fingerprint {ds.fingerprint}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Load/inspect MOSI/MOSEI feature pickles; write the synthetic dataset.")
    p.add_argument("--write-synthetic", metavar="PATH", help="write the synthetic dataset as an MMSA-schema pickle")
    p.add_argument("--summary", action="store_true", help="load a dataset and print its splits")
    p.add_argument("--dataset", default="synthetic", choices=["mosi", "mosei", "synthetic"])
    p.add_argument("--data-path", help="explicit MMSA or MulT pickle (wins over --dataset)")
    p.add_argument("--data-dir", default="data", help="where --dataset mosi|mosei looks (default: data)")
    p.add_argument("--unaligned", action="store_true", help="unaligned_50.pkl / unaligned synthetic lengths")
    p.add_argument("--size", default="mosi", choices=sorted(SYNTHETIC_SIZES), help="synthetic split sizes and widths")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    args = p.parse_args(argv)
    if not (args.write_synthetic or args.summary):
        p.error("nothing to do: pass --write-synthetic PATH and/or --summary")
    try:
        if args.write_synthetic:
            folder = os.path.dirname(os.path.abspath(args.write_synthetic))
            if not os.path.isdir(folder) or os.path.isdir(args.write_synthetic):
                raise DataError(f"--write-synthetic {args.write_synthetic}: "
                                f"{'is a folder' if os.path.isdir(args.write_synthetic) else f'folder {folder} does not exist'}; "
                                f"expected a file path in an existing folder (e.g. mkdir -p {folder})")
            raw = make_synthetic(args.size, args.unaligned, args.seed)
            for split in raw.values():
                split.pop("sarcastic")     # keep the file exactly in MMSA's schema
            try:
                with open(args.write_synthetic, "wb") as f:
                    pickle.dump(raw, f, protocol=4)
            except OSError as e:
                raise DataError(f"cannot write {args.write_synthetic} ({e.strerror}); pick a writable path")
            print(f"wrote {args.write_synthetic} ({os.path.getsize(args.write_synthetic) / 2**20:.0f} MiB)")
        if args.summary:
            summarise(load_dataset(args.dataset, args.data_path, args.data_dir, args.unaligned,
                                   synthetic_size=args.size, synthetic_seed=args.seed))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
