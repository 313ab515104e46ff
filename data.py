"""
data.py -- CMU-MOSI / CMU-MOSEI precomputed features, read and checked.

Researchers bring the feature pickles everybody in the field uses:
  * MMSA (github.com/thuiar/MMSA): MOSI/Processed/aligned_50.pkl, unaligned_50.pkl
    {split: {"text" (N,50,768), "text_bert" (N,3,50), "audio" (N,L_a,d_a),
             "vision" (N,L_v,d_v), "audio_lengths", "vision_lengths",
             "regression_labels" (N,), "id" (N,), ...}}
  * MulT (github.com/yaohungt/Multimodal-Transformer): mosi_data.pkl, *_noalign.pkl
    {split: {"text" (N,50,300), "audio", "vision", "labels" (N,1,1), "id" (N,3)}}
The schema is detected from the keys; every width and length is read from the file. `load_dataset`
turns either into three torch Datasets whose items are dicts of text/audio/vision (L, d) float32,
boolean *_mask (L,) with True = real frame, label (float) and id (str); anything wrong with a file
is one DataError naming the file, split and key. Clean-up (README, "Data"): non-finite values become
0, then each feature is standardised with the *train* split's statistics (`fit_stats`). Each dataset
carries a `fingerprint` of every value it read. synthetic.py builds a seeded stand-in as the dict a
pickle holds, and `load_dataset("synthetic")` reads that dict as it reads a file. Check your files
with train.py's data flags: `python train.py --dataset mosi --check-data` prints `summarise`.
"""
import hashlib
import json
import math
import operator
import os
import pickle
import reprlib
import sys

import numpy as np
import torch
from torch.utils.data import Dataset

import synthetic
from miar import MODALITIES     # the model's input names are the data's keys

SPLITS = ("train", "valid", "test")
CHUNK = 512       # samples per chunk in clean-up and fingerprint: no temporary the size of a whole split
MIN_STD = 1e-6    # features that are constant on train are left unscaled (std -> 1)
FENCE_TAIL = 0.001        # share of train values at either end left out when placing the fence (fit_stats)
FENCE_SAMPLE = 2 ** 24    # train values (frames x features) drawn to place the fence: bounded memory on MOSEI
FENCE_SEED = 0            # the draw is seeded: the same file always gets the same statistics
LABEL_RANGE = 3.0  # CMU-MOSI/MOSEI sentiment scores lie in [-3, 3]
FINGERPRINT_VERSION = "v2"   # every value; before it, 16 bare hex digits of a sample of them
PER_SAMPLE_KEYS = ("id", "text_bert", "audio_lengths", "vision_lengths", "text_lengths")

# Where `--dataset mosi|mosei` looks inside --data-dir: MMSA's layout first (the most used today), then MulT's
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
# Reading a pickle: nothing but arrays and containers, none larger than the file

# Everything MMSA and MulT pickles need, written by numpy 1.x (numpy.core) or 2.x (numpy._core),
# protocols 2 to 5: arrays are rebuilt by _reconstruct / _frombuffer from a dtype, numpy scalars
# by scalar(dtype, bytes), and protocol 2 writes bytes as _codecs.encode(str, 'latin1').
SAFE_GLOBALS = {("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))} | {
    (builtins, name) for builtins in ("builtins", "__builtin__")   # __builtin__: protocol 2's name for it
    for name in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                 "bool", "complex")}


def _size(n=b"", *_):      # n as an int (a numpy one too), else 0: bytes(b"..") copies what the file holds
    return operator.index(n) if hasattr(n, "__index__") else 0


def _elements(shape):      # never a string: ("x" * n) would allocate too
    return math.prod(map(_size, shape if isinstance(shape, (tuple, list)) else [shape]))


# The bytes each allocating constructor asks for: nothing genuine is larger than the file it comes from
ALLOCATES = {"bytes": _size, "bytearray": _size, "scalar": lambda dtype, *_: np.dtype(dtype).itemsize,
             "_reconstruct": lambda subtype, shape, dtype: _elements(shape) * np.dtype(dtype).itemsize}


class PickledArray(np.ndarray):
    """'numpy.ndarray' in a feature pickle, as _reconstruct starts it: numpy does not count the items of an
    object array's state (too few crash the process, numpy 2.4). np.asarray makes it a plain ndarray."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(f"the pickle calls numpy.ndarray{reprlib.repr(args)}, as numpy's pickles never do")

    def __setstate__(self, state):
        *_, shape, dtype, _, items = state          # ([version,] shape, dtype, is_fortran, data)
        if np.dtype(dtype).hasobject and len(items) != _elements(shape):
            raise pickle.UnpicklingError(f"an object array of shape {shape} holds {len(items)} items")
        super().__setstate__(state)


class FeatureUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers, nothing else: a pickle can have any function called while
    loading, and feature files travel as links. Globals outside SAFE_GLOBALS are refused, by name."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.size = os.fstat(file.fileno()).st_size

    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise DataError(f"{self.path}: refused to load: the pickle asks for '{module}.{name}', which a feature "
                            f"file never holds (MMSA and MulT files hold numpy arrays, dicts, lists, strings and "
                            f"numbers). Loading it could run code. If you made this file yourself, re-save it with "
                            f"plain numpy arrays in dicts; otherwise do not use it")
        if name == "ndarray":
            return PickledArray
        make = super().find_class(module, name)

        def bounded(*args):
            asked = ALLOCATES[name](*args)
            if asked > self.size:
                raise DataError(f"{self.path}: refused to load: the pickle asks '{module}.{name}' for {asked:,} bytes, "
                                f"more than the whole file holds ({self.size:,}): damaged or hostile; do not use it")
            return make(*args)
        return bounded if name in ALLOCATES else make


def read_pickle(path, what="feature file"):
    """Unpickle `path` with FeatureUnpickler, turning every way that can fail into a DataError."""
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = FeatureUnpickler(f, path).load()
    except DataError:
        raise
    except MemoryError:       # the pickle's own opcodes hold lengths too, and can say any number
        raise DataError(f"{path}: refused to load: it asks for more memory than is free, though it holds only "
                        f"{os.path.getsize(path):,} bytes. It is damaged or made to exhaust memory: do not use it")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            OSError) as e:
        raise DataError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); "
                        f"expected a dict with 'train', 'valid' and 'test' as written by MMSA or MulT")
    if not isinstance(raw, dict) or not all(s in raw for s in SPLITS):
        found = sorted(raw.keys()) if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{path}: expected a dict with splits {list(SPLITS)}, found {found}")
    return raw


def default_path(name, data_dir, unaligned):
    """The first existing default file of `name` under data_dir, or a DataError saying where we looked."""
    if (name, unaligned) not in DEFAULT_FILES:
        raise DataError(f"unknown dataset {name!r}; expected 'mosi', 'mosei' or 'synthetic' (or a --data-path)")
    candidates = [os.path.join(data_dir, f) for f in DEFAULT_FILES[(name, unaligned)]]
    for path in candidates:
        if os.path.isfile(path):
            return path
    kind = "unaligned_50.pkl" if unaligned else "aligned_50.pkl"
    raise DataError(f"no {name.upper()} features found; looked for: {', '.join(candidates)}. Download "
                    f"{name.upper()}/Processed/{kind} from the MMSA project (github.com/thuiar/MMSA, dataset links "
                    f"in its README) and put it under {data_dir}/ (or pass --data-dir DIR or --data-path FILE). "
                    f"`--dataset synthetic` runs without any download.")


# ----------------------------------------------------------------------------
# One split: features, labels, ids and masks, checked

def _numbers(value, what, expected, dtype=None):
    """np.asarray(value), cast to dtype, or a DataError saying what `what` holds instead. Text is refused:
    numpy would parse '1.5' as a number, and a feature file never holds numbers (or labels) as text."""
    try:
        x = np.asarray(value)
        if x.dtype.kind in "USV" or (x.dtype == object and any(isinstance(v, (str, bytes)) for v in x.flat)):
            raise TypeError(f"dtype {x.dtype}: text or raw bytes")
        return x if dtype is None else x.astype(dtype, order="C", copy=False)   # Fortran order: same numbers
    except (TypeError, ValueError) as e:     # ragged lists, text, objects that are not numbers
        raise DataError(f"{what} is not numeric ({e}); {expected}")


def _features(split, key, where):
    """split[key] as float32 (N, L, d), dropping the original so only one copy is alive."""
    if key not in split:
        raise DataError(f"{where}: missing key '{key}'; found keys {sorted(split)}")
    expected = "expected 3-D (N, length, features) numbers, every utterance padded to one length"
    x = _numbers(split.pop(key), f"{where}: '{key}'", expected)
    if x.ndim != 3:
        ragged = " (an object array: per-utterance arrays of different lengths?)" if x.dtype == object else ""
        raise DataError(f"{where}: '{key}' has shape {x.shape}{ragged}; {expected}")
    if 0 in x.shape[1:]:     # masks, statistics and the model's pooling all need a frame to stand on
        raise DataError(f"{where}: '{key}' has shape {x.shape}: no frame or no feature; {expected}, at least 1 "
                        f"(pad with an all-zero frame: it is masked as missing)")
    return _numbers(x, f"{where}: '{key}'", expected, np.float32)


def _check_counts(split, counts, where, expected):
    """One N for every per-sample array: else a split trains in part, or fails later with an IndexError."""
    counts.update({k: (np.shape(split[k]) or (0,))[0] for k in PER_SAMPLE_KEYS if k in split})   # 0: a scalar
    if len(set(counts.values())) != 1:
        raise DataError(f"{where}: sample counts differ across keys: {counts}; {expected}")


def _chunks(n):
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def zero_rows_mask(x):
    """(N, L, d) -> (N, L) bool: frames with any non-zero value, wherever (MulT pads on the left)."""
    mask = np.empty(x.shape[:2], dtype=bool)
    for sl in _chunks(len(x)):
        mask[sl] = (x[sl] != 0).any(-1)
    return mask


def lengths_mask(lengths, length, where):
    """(N,) valid-frame counts -> (N, L) bool; MMSA pads after the real frames."""
    lengths = _numbers(lengths, where, "expected (N,) whole frame counts", np.float64).reshape(-1)
    fractional = lengths != np.round(lengths)    # NaN counts too; astype(int) would truncate silently
    if fractional.any():
        raise DataError(f"{where}: {int(fractional.sum())} lengths are not whole numbers (first: "
                        f"{lengths[fractional][0]}); expected whole frame counts")
    lengths = lengths.astype(np.int64)
    if lengths.min(initial=0) < 0 or lengths.max(initial=0) > length:
        raise DataError(f"{where}: lengths range {lengths.min()}..{lengths.max()}, expected 0..{length} (padded)")
    return np.arange(length)[None, :] < lengths[:, None]


def text_mask_of(split, text, where):
    """Text padding mask from 'text_lengths', else BERT's attention mask ('text_bert' row 1), else non-zero rows."""
    if "text_lengths" in split:
        return lengths_mask(split["text_lengths"], text.shape[1], f"{where} 'text_lengths'")
    if "text_bert" not in split:
        return zero_rows_mask(text)
    expected = f"expected ({len(text)}, 3, {text.shape[1]}) numbers (token ids, attention mask, segment ids)"
    bert = _numbers(split["text_bert"], f"{where}: 'text_bert'", expected, np.float32)
    if bert.ndim != 3 or bert.shape[0] != len(text) or bert.shape[1] < 2 or bert.shape[2] != text.shape[1]:
        raise DataError(f"{where}: 'text_bert' has shape {bert.shape}; {expected}")
    return bert[:, 1, :] > 0


def clean_nonfinite(x):
    """Replace NaN/+-inf with 0 in place, chunk by chunk; returns how many there were."""
    count = 0
    for sl in _chunks(len(x)):
        bad = ~np.isfinite(x[sl])
        count += int(bad.sum())
        x[sl][bad] = 0.0
    return count


def convert_split(raw, name, source):
    """One split of a raw pickle -> dict of float32 features, bool masks, labels, ids. Pops the split out of
    `raw`, and each array out of it once converted: two copies of MOSEI unaligned fill a workstation."""
    where = f"{source} [{name}]"
    split = raw.pop(name)
    if not isinstance(split, dict):
        raise DataError(f"{where}: expected a dict of arrays, found {type(split).__name__}")
    label_key = "regression_labels" if "regression_labels" in split else "labels"     # MMSA / MulT schema
    if label_key not in split:
        raise DataError(f"{where}: no label key; expected 'regression_labels' (MMSA schema) or "
                        f"'labels' (MulT schema), found keys {sorted(split)}")
    out = {"nonfinite": {}}
    for key in MODALITIES:
        out[key] = _features(split, key, where)
        out["nonfinite"][key] = clean_nonfinite(out[key])
    expected = "expected one sentiment score in [-3, 3] per sample, (N,) or MulT's (N, 1, 1)"
    labels = _numbers(split.pop(label_key), f"{where}: '{label_key}'", expected, np.float32)
    if labels.ndim == 0 or labels.size != len(labels):
        raise DataError(f"{where}: '{label_key}' has shape {labels.shape}; {expected}. Pick the score's column")
    out["label"] = labels = labels.reshape(-1)
    n = len(labels)
    _check_counts(split, {k: len(out[k]) for k in MODALITIES} | {label_key: n}, where, "expected one N for all")
    if n == 0:
        raise DataError(f"{where}: the split is empty (N = 0); expected at least one sample")
    bad = ~(np.abs(labels) <= LABEL_RANGE)      # NaN and inf too
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} of {n} '{label_key}' are not finite scores in [-3, 3] "
                        f"(first: {labels[bad][0]:g}); {expected}")
    out["id"] = ids_of(split, n, name)

    # Audio/vision follow the text mask when all three share one padded length and the *_lengths (if
    # any) count the text's real tokens, as in MMSA's aligned files; other lengths are honoured (an
    # unaligned export may pad every modality to one length). Without lengths: non-zero rows. A frame
    # all exactly 0 inside the real length is a sensor that found nothing (Facet writes such rows where it
    # found no face): missing evidence, not a neutral face, so it is masked like padding.
    out["text_mask"] = text_mask_of(split, out["text"], where)
    same_length = out["text"].shape[1] == out["audio"].shape[1] == out["vision"].shape[1]
    out["blank"] = {"text": 0}
    follows_text = []
    for key in ("audio", "vision"):
        nonzero = zero_rows_mask(out[key])      # one pass: it is both the fallback mask and the blank test
        if f"{key}_lengths" in split:
            real = lengths_mask(split[f"{key}_lengths"], out[key].shape[1], f"{where} '{key}_lengths'")
            if same_length and np.array_equal(real.sum(1), out["text_mask"].sum(1)):
                real = out["text_mask"]
        else:
            real = out["text_mask"] if same_length else nonzero
        follows_text.append(real is out["text_mask"])
        out[f"{key}_mask"] = real & nonzero
        out["blank"][key] = int(real.sum() - out[f"{key}_mask"].sum())
    out["aligned"] = all(follows_text)
    return out


def ids_of(split, n, name):
    """Ids as str: MMSA 'video$_$clip'; MulT (N, 3) bytes joined by '_'; else split_i (never shared)."""
    if "id" not in split:
        return np.array([f"{name}_{i}" for i in range(n)])
    rows = np.asarray(split["id"]).reshape(n, -1)       # MMSA's (N,) as (N, 1)
    return np.array(["_".join(p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in row)
                     for row in rows])


def swap_text(splits, path):
    """Replace the text with another text model's features (any width), as MIAR claims to work across text
    models: the same splits with 'text' (N, L, d), optionally 'id' (checked against the main file) and
    'text_lengths' / 'text_bert' for the mask (else the main file's mask when the length is the same)."""
    raw = read_pickle(path, what="text-feature file")
    guessed = []       # splits whose mask had to be guessed from non-zero rows
    for name in SPLITS:
        where, main = f"{path} [{name}]", splits[name]
        split = raw.pop(name)
        if not isinstance(split, dict):
            raise DataError(f"{where}: expected a dict with 'text', found {type(split).__name__}")
        text = _features(split, "text", where)
        _check_counts(split, {"the main file": len(main["id"]), "text": len(text)}, where,
                      "expected the main file's utterances, in the same order")
        ids = ids_of(split, len(text), name)
        if "id" in split and not (ids == main["id"]).all():
            first = int(np.argmax(ids != main["id"]))
            raise DataError(f"{where}: ids differ from the main file's, first at index {first}: "
                            f"{ids[first]!r} vs {main['id'][first]!r}; expected the same order")
        main["nonfinite"]["text"] += clean_nonfinite(text)
        has_mask = "text_lengths" in split or "text_bert" in split
        if has_mask or text.shape[1] != main["text"].shape[1]:
            main["text_mask"] = text_mask_of(split, text, where)
            if not has_mask:
                guessed.append(f"{name} {text.shape[1]} vs {main['text'].shape[1]}")
        # else the main file's mask holds: non-zero rows would count BERT-like padding as real tokens
        main["text"] = text
    if guessed:
        warn(f"{path}: no 'text_lengths' or 'text_bert' and another token length than the main file's "
             f"({', '.join(guessed)}): real tokens are taken to be the non-zero rows, which counts padding as "
             f"real if the text model writes non-zero vectors there (BERT does). Add 'text_lengths' to the file")


def check_splits(splits, source):
    """What a model cannot learn from: an error where the file is surely broken, a warning with a count
    where a run can still make sense (e.g. --modalities); and splits that share utterances."""
    widths = {name: {k: split[k].shape[-1] for k in MODALITIES} for name, split in splits.items()}
    for name in SPLITS[1:]:
        if widths[name] != widths["train"]:
            raise DataError(f"{source}: feature widths differ between splits: train {widths['train']}, "
                            f"{name} {widths[name]}; every split must hold the same features (re-export the file)")
    for name, split in splits.items():
        where = f"{source} [{name}]"
        for key in MODALITIES:     # a real audio/vision frame has a non-zero value; no real token is an error
            x = split[key]
            usable = split[f"{key}_mask"].any() if key != "text" else any(x[sl].any() for sl in _chunks(len(x)))
            unscaled = ", so it is left unscaled (mean 0, std 1) in every split" if name == "train" else ""
            if not usable:
                warn(f"{where}: '{key}' has no real frame with a non-zero value in any of its {len(x)} samples "
                     f"({split['nonfinite'][key]} of its {x.size} values were non-finite, set to 0){unscaled}; the "
                     f"model can learn nothing from it. Check the file, or train without it (--modalities)")
        # aligned audio/vision follow the text mask, so a sample without a real token has no real frame at all
        empty = ~split["text_mask"].any(1)
        if empty.all():
            raise DataError(f"{where}: the text mask ('text_lengths', 'text_bert' row 1 or non-zero text rows) "
                            f"marks no real token in any of the {len(empty)} samples; expected 1 (or a length) for "
                            f"each real token. Check the file's 'text_bert' (token ids, attention mask, segment ids)")
        if empty.any():
            warn(f"{where}: {int(empty.sum())} of {len(empty)} samples have no real text token"
                 f"{' (and so no real audio/vision frame: the data is aligned)' if split['aligned'] else ''}; "
                 f"the model sees only padding for them. First: '{split['id'][int(np.argmax(empty))]}'")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            sa, sb = splits[a], splits[b]
            # array_equal compares shapes first: the text of splits of different sizes is never read
            if np.array_equal(sa["label"], sb["label"]) and np.array_equal(sa["text"], sb["text"]):
                warn(f"{source}: splits {a} and {b} are identical ({len(sa['label'])} samples with the same "
                     f"labels and text features); scores on {b} would measure memory. Check how the file was split")
            elif (shared := np.intersect1d(sa["id"], sb["id"])).size:      # made-up ids (split_i) never are
                warn(f"{source}: {shared.size} ids occur in both {a} and {b} (e.g. '{shared[0]}'); the same "
                     f"utterance in two splits leaks {a} into {b}. Check how the file was split")


# ----------------------------------------------------------------------------
# Standardisation with train statistics

def fit_stats(split):
    """Per-feature statistics of the real frames of one split (train): {modality: {"mean", "std", "low",
    "high"}}, each (d,) float32. One broken frame (1e30 in one COVAREP frame) would set a feature's std
    alone and standardise its other values to ~0, erasing it. So each feature gets a fence, [low, high]:
    the range of its train values without the FENCE_TAIL most extreme at either end, widened by its own
    width on each side. Values outside are clipped to it, in train before its mean and std and in every
    split when standardising. A feature that is one value on nearly every frame gets no fence (+-inf)."""
    stats = {}
    rng = np.random.default_rng(FENCE_SEED)
    for key in MODALITIES:
        x, mask = split[key], split[f"{key}_mask"]
        d = x.shape[-1]
        # quantiles need the values in memory: each real frame is kept with one probability, FENCE_SAMPLE in all
        keep = min(1.0, FENCE_SAMPLE / max(int(mask.sum()) * d, 1))
        real = (x[sl][mask[sl]] for sl in _chunks(len(x)))
        sample = np.concatenate([np.zeros((0, d), x.dtype)] + [f[rng.random(len(f)) < keep] for f in real])
        if len(sample) == 0:      # no real frame (warned in check_splits): leave the modality unscaled
            mean, std, low, high = np.zeros(d), np.ones(d), np.full(d, -np.inf), np.full(d, np.inf)
        else:     # 'higher' / 'lower': never the most extreme value itself, however few frames there are
            lo = np.quantile(sample, FENCE_TAIL, axis=0, method="higher")
            hi = np.quantile(sample, 1 - FENCE_TAIL, axis=0, method="lower")
            width = hi - lo
            low = np.where(width > 0, lo - width, -np.inf)
            high = np.where(width > 0, hi + width, np.inf)
            total, total_sq, count = np.zeros(d), np.zeros(d), int(mask.sum())
            for sl in _chunks(len(x)):
                frames = np.clip(x[sl][mask[sl]].astype(np.float64), low, high)   # (frames, d)
                total += frames.sum(0)
                total_sq += (frames ** 2).sum(0)
            mean = total / count
            std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
            std[std < MIN_STD] = 1.0
        stats[key] = {k: np.asarray(v, dtype=np.float32) for k, v in
                      (("mean", mean), ("std", std), ("low", low), ("high", high))}
    return stats


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
            values += int(outside.sum())
            frames += int(outside.any(-1).sum())
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
    """{'train', 'valid', 'test'} FeatureDatasets of dataset 'mosi' | 'mosei' (default files under data_dir)
    | 'synthetic', or of data_path (an MMSA/MulT pickle, which wins). text_features: a pickle with another
    text model's 'text' for the same splits. normalize: standardise with train statistics (False: the
    ablation), or with `stats` when given (evaluating a checkpoint)."""
    # how to load this data again: the arguments, paths absolute (a checkpoint rebuilds its data alone)
    recipe = {k: v for k, v in locals().items() if k not in ("stats", "verbose")}
    recipe.update({k: os.path.abspath(recipe[k]) for k in ("data_path", "data_dir", "text_features") if recipe[k]})
    if data_path is None and dataset == "synthetic":
        source = f"synthetic ({synthetic_size}{', unaligned' if unaligned else ''}, seed {synthetic_seed})"
        raw = synthetic.make_synthetic(synthetic_size, unaligned, synthetic_seed)
    else:
        source = data_path or default_path(dataset, data_dir, unaligned)
        raw = read_pickle(source)
    splits = {name: convert_split(raw, name, source) for name in SPLITS}
    del raw
    if text_features is not None:
        swap_text(splits, text_features)
    check_splits(splits, source)
    for key, what in (("nonfinite", "replaced non-finite values with 0"),
                      ("blank", "masked frames whose features are all 0 (the sensor found nothing, e.g. no face)")):
        counts = {m: sum(split[key][m] for split in splits.values()) for m in MODALITIES}
        if verbose and any(counts.values()):
            print(f"data: {what}: " + ", ".join(f"{m} {v}" for m, v in counts.items() if v))
    fingerprint = fingerprint_of(splits)
    if normalize:
        stats = stats if stats is not None else fit_stats(splits["train"])
        clipped = {name: standardise(split, stats, f"{source} [{name}]") for name, split in splits.items()}
        far = [f"{name} {key} {v} value{'s' * (v != 1)} in {f} frame{'s' * (f != 1)}"
               for name, counts in clipped.items() for key, (v, f) in counts.items() if v]
        if far:
            warn(f"{source}: clipped values far outside the train values' range to its fence (the range "
                 f"widened by its own width on each side), so that no single frame sets a feature's scale: "
                 f"{'; '.join(far)}. Many such values point to a broken feature extraction")
    else:
        stats = None
    return {name: FeatureDataset(split, stats, source, fingerprint, recipe) for name, split in splits.items()}


def fingerprint_of(splits):
    """The data as read (cleaned, text swapped, not standardised): "v2:" and 16 hex digits of a sha256 of
    every value, per split: ids, features, masks, labels, with their shapes and their values in C order
    whatever the layout in memory, CHUNK samples at a time. Another version's cannot be compared with it."""
    h = hashlib.sha256()
    for name in SPLITS:
        split = splits[name]
        h.update(json.dumps([name, split["id"].tolist()]).encode())
        for key in (*MODALITIES, *(f"{m}_mask" for m in MODALITIES), "label"):
            h.update(f"{key} {split[key].dtype.str} {split[key].shape}".encode())
            for sl in _chunks(len(split[key])):
                h.update(np.ascontiguousarray(split[key][sl]))
    return f"{FINGERPRINT_VERSION}:{h.hexdigest()[:16]}"


def summarise(datasets):
    """Per split: N, each modality's (length, width) and share of real frames, the labels; the fingerprint."""
    for name, ds in datasets.items():
        t = ds.tensors
        frames = ", ".join(f"{k} {tuple(t[k].shape[1:])} real {t[k + '_mask'].float().mean():.0%}"
                           for k in MODALITIES)
        print(f"{name:5s} N={len(ds):6d}  {frames}  label mean {t['label'].mean():+.2f} std {t['label'].std():.2f}")
    print(f"fingerprint {ds.fingerprint}")
