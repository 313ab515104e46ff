"""
synthetic.py -- a seeded stand-in for CMU-MOSI / CMU-MOSEI, with real cross-modal structure.

`make_synthetic` builds the dict that an MMSA pickle holds ({split: {"text", "text_bert", "audio",
"vision", "audio_lengths", "vision_lengths", "regression_labels", "id", ...}}, see data.py), so
`data.load_dataset("synthetic")` reads it exactly as it reads a downloaded file, and
`python train.py --write-synthetic PATH` writes it as one (`write_pickle`). It imports nothing from
data.py, which imports it.
"""
import pickle

import numpy as np

SPLITS = ("train", "valid", "test")     # the splits of an MMSA file, in order (each gets its own seed)

# The story. Each utterance gets a sentiment y drawn from the real CMU-MOSI label
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
    """A seeded MMSA-schema dict {train, valid, test} following the story above (plus the story's
    hidden 'sarcastic' flag per utterance, which no MMSA file holds)."""
    if size not in SYNTHETIC_SIZES:
        raise ValueError(f"unknown synthetic size {size!r}; expected one of {sorted(SYNTHETIC_SIZES)}")
    if seed < 0:
        raise ValueError(f"synthetic seed {seed} is negative; numpy's generators take seeds from 0 up")
    spec = SYNTHETIC_SIZES[size]
    lengths = spec["unaligned"] if unaligned else (TEXT_LEN, TEXT_LEN)
    direction = np.random.default_rng(seed).standard_normal(spec["dims"][0]).astype(np.float32)
    direction /= np.linalg.norm(direction) / np.sqrt(TEXT_NOISE * 2)   # a shift that stands out of the noise
    return {name: _synthetic_split(n, spec["dims"], lengths, np.random.default_rng([seed, i]), direction, name)
            for i, (name, n) in enumerate(zip(SPLITS, spec["n"]))}


def write_pickle(path, size="mosi", unaligned=False, seed=0):
    """make_synthetic's dict as an MMSA-schema pickle at `path`, without the hidden 'sarcastic' flag."""
    raw = make_synthetic(size, unaligned, seed)
    for split in raw.values():
        split.pop("sarcastic")
    with open(path, "wb") as f:
        pickle.dump(raw, f, protocol=4)
