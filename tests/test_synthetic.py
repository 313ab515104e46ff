"""synthetic.py: the seeded stand-in, bit for bit, with MOSI's sizes and frame rates."""
import hashlib
import pickle

import numpy as np
import pytest

import synthetic
from data import load_dataset


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b = synthetic.make_synthetic("tiny", seed=3), synthetic.make_synthetic("tiny", seed=3)
    c = synthetic.make_synthetic("tiny", seed=4)
    for key in ("text", "audio", "vision", "regression_labels"):
        assert np.array_equal(a["valid"][key], b["valid"][key])
    assert not np.array_equal(a["valid"]["regression_labels"], c["valid"]["regression_labels"])


def test_synthetic_has_mosi_sizes_widths_and_raw_scales_orders_apart():
    ds = load_dataset("synthetic", normalize=False)
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [1284, 229, 686]
    assert ds["train"].dims == {"text": 768, "audio": 5, "vision": 20}
    vision = ds["train"].tensors["vision"][ds["train"].tensors["vision_mask"]]
    spread = vision.std(0)
    assert spread.max() / spread.min() > 100          # why normalisation matters
    labels = ds["train"].tensors["label"].numpy()
    assert labels.min() >= -3 and labels.max() <= 3 and (labels == 0).mean() > 0.01


def test_synthetic_unaligned_uses_mosi_frame_rates():
    ds = load_dataset("synthetic", unaligned=True)["test"]
    assert ds.lengths == {"text": 50, "audio": 375, "vision": 500}


def digest(raw):
    """sha256 of every array of a make_synthetic dict: key, dtype, shape and bytes, in a fixed order."""
    h = hashlib.sha256()
    for split in ("train", "valid", "test"):
        for key in sorted(raw[split]):
            v = np.asarray(raw[split][key])
            h.update(key.encode() + str(v.dtype).encode() + str(v.shape).encode() + np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("unaligned, seed, expected", [(False, 0, "01448f0dbdf2bce2"), (True, 3, "e0914cc51012f579")])
def test_synthetic_arrays_are_bit_identical_to_those_the_recorded_results_used(unaligned, seed, expected):
    # the digests of data.make_synthetic's arrays, before it moved here
    assert digest(synthetic.make_synthetic("tiny", unaligned, seed)) == expected


@pytest.mark.parametrize("size, seed, message", [("huge", 0, "unknown synthetic size 'huge'"),
                                                 ("tiny", -1, "synthetic seed -1 is negative")])
def test_bad_size_or_seed_is_a_clear_value_error(size, seed, message):
    with pytest.raises(ValueError, match=message):
        synthetic.make_synthetic(size, seed=seed)


def test_written_pickle_holds_exactly_mmsa_keys(tmp_path):
    synthetic.write_pickle(tmp_path / "s.pkl", "tiny")
    raw = pickle.loads((tmp_path / "s.pkl").read_bytes())
    assert set(raw) == {"train", "valid", "test"} and "sarcastic" not in raw["test"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.pkl"]
