"""data.py: both pickle schemas, masks, clean-up, text swap, the data checks of train.py's command line, every bad input."""
import inspect
import os
import pickle
import re

import numpy as np
import pytest

import data
import synthetic
import train
from data import DataError, load_dataset

SIZES = {"train": 6, "valid": 3, "test": 4}
FIRST_ID = {"train": 0, "valid": 100, "test": 200}     # every utterance in one split only, as in real files


def mmsa_split(n, rng, first_id=0, len_t=8, len_a=8, len_v=8, d_t=12, lengths=True, pad_words=None):
    """A tiny MMSA split: real frames first, zero padding after (BERT text is non-zero at padding)."""
    words = pad_words if pad_words is not None else rng.integers(2, len_t + 1, n)
    n_a = np.ceil(words * len_a / len_t).astype(int)
    n_v = np.ceil(words * len_v / len_t).astype(int)
    audio = rng.normal(5.0, 2.0, (n, len_a, 3)) * (np.arange(len_a)[None, :, None] < n_a[:, None, None])
    vision = rng.normal(-1.0, 9.0, (n, len_v, 4)).astype(np.float32) * (np.arange(len_v)[None, :, None] < n_v[:, None, None])
    text_mask = np.arange(len_t)[None] < words[:, None]
    split = {
        "text": rng.normal(0, 1, (n, len_t, d_t)).astype(np.float32),
        "text_bert": np.stack([np.zeros((n, len_t)), text_mask, np.zeros((n, len_t))], 1),
        "audio": audio,                                  # float64 on purpose, as MOSEI's
        "vision": vision,
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "id": np.array([f"vid{first_id + i}$_$1" for i in range(n)]),
    }
    if lengths:
        split["audio_lengths"], split["vision_lengths"] = list(n_a), n_v
    return split


def mmsa_pickle(tmp_path, unaligned=False, lengths=True, name="mmsa.pkl", seed=0, **kw):
    rng = np.random.default_rng(seed)
    lens = dict(len_a=20, len_v=15) if unaligned else {}
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s], lengths=lengths, **lens, **kw) for s, n in SIZES.items()}
    path = tmp_path / name
    path.write_bytes(pickle.dumps(raw))
    return path, raw


def mult_pickle(tmp_path, unaligned=False):
    """A tiny MulT split: no lengths, GloVe text; unaligned files are LEFT-padded."""
    rng = np.random.default_rng(1)
    raw = {}
    for s, n in SIZES.items():
        len_t, len_a = 8, (20 if unaligned else 8)
        real_t = rng.integers(2, len_t + 1, n)
        real_a = np.ceil(real_t * len_a / len_t).astype(int)
        mask_t = np.arange(len_t)[None] >= (len_t - real_t)[:, None]     # left padding
        mask_a = np.arange(len_a)[None] >= (len_a - real_a)[:, None]
        raw[s] = {
            "text": rng.normal(0, 1, (n, len_t, 6)) * mask_t[..., None],
            "audio": rng.normal(0, 1, (n, len_a, 3)) * mask_a[..., None],
            "vision": rng.normal(0, 1, (n, len_a, 4)) * mask_a[..., None],
            "labels": rng.uniform(-3, 3, (n, 1, 1)),
            "id": np.array([[f"v{FIRST_ID[s] + i}".encode(), b"0", b"1"] for i in range(n)]),
        }
        raw[s]["audio"][0, -1, 0] = np.nan     # a real frame (left padding: the last one is real)
        raw[s]["vision"][1, -1, 1] = -np.inf
    path = tmp_path / "mult.pkl"
    path.write_bytes(pickle.dumps(raw))
    return path, raw, len_t


def test_mmsa_aligned_items_have_documented_keys_shapes_and_dtypes(tmp_path):
    path, raw = mmsa_pickle(tmp_path)
    ds = load_dataset(data_path=str(path))
    assert set(ds) == {"train", "valid", "test"}
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [6, 3, 4]
    item = ds["train"][0]
    assert set(item) == {"text", "audio", "vision", "text_mask", "audio_mask", "vision_mask", "label", "id"}
    assert item["text"].shape == (8, 12) and item["audio"].shape == (8, 3) and item["vision"].shape == (8, 4)
    assert item["audio"].dtype == item["text"].dtype == data.torch.float32
    assert item["text_mask"].dtype == data.torch.bool and isinstance(item["id"], str)
    assert item["id"] == "vid0$_$1"
    assert np.isclose(float(item["label"]), raw["train"]["regression_labels"][0])
    batch = ds["train"][[0, 2, 3]]
    assert batch["text"].shape == (3, 8, 12) and batch["id"] == ["vid0$_$1", "vid2$_$1", "vid3$_$1"]


def test_aligned_masks_come_from_text_bert_and_audio_vision_follow(tmp_path):
    path, raw = mmsa_pickle(tmp_path)
    expected = raw["train"]["text_bert"][:, 1] > 0      # raw is modified by nothing: we read the file
    ds = load_dataset(data_path=str(path))["train"]
    assert np.array_equal(ds.tensors["text_mask"].numpy(), expected)
    assert np.array_equal(ds.tensors["audio_mask"].numpy(), expected)
    assert np.array_equal(ds.tensors["vision_mask"].numpy(), expected)


def test_unaligned_masks_come_from_lengths(tmp_path):
    path, raw = mmsa_pickle(tmp_path, unaligned=True)
    ds = load_dataset(data_path=str(path))["valid"]
    assert ds.tensors["audio"].shape[1:] == (20, 3) and not ds.aligned
    lengths = np.asarray(raw["valid"]["audio_lengths"])
    assert np.array_equal(ds.tensors["audio_mask"].sum(1).numpy(), lengths)
    assert ds.tensors["audio_mask"][:, 0].all()          # MMSA pads at the end


def test_unaligned_masks_without_lengths_come_from_nonzero_rows(tmp_path):
    path, raw = mmsa_pickle(tmp_path, unaligned=True, lengths=False)
    ds = load_dataset(data_path=str(path))["test"]
    expected = (raw["test"]["vision"] != 0).any(-1)
    assert np.array_equal(ds.tensors["vision_mask"].numpy(), expected)


def test_mult_schema_left_padding_labels_ids_and_nonfinite(tmp_path, capsys):
    path, raw, len_t = mult_pickle(tmp_path, unaligned=True)
    ds = load_dataset(data_path=str(path))
    assert "replaced non-finite values with 0: audio 3, vision 3" in capsys.readouterr().out
    train = ds["train"]
    mask = train.tensors["audio_mask"].numpy()
    assert np.array_equal(mask, (np.nan_to_num(raw["train"]["audio"], nan=1.0) != 0).any(-1))
    assert mask[:, -1].all() and not mask[:, 0].all()     # left-padded: the last frame is real
    assert np.allclose(train.tensors["label"].numpy(), raw["train"]["labels"][:, 0, 0])
    assert train.ids[0] == "v0_0_1"
    for key in ("text", "audio", "vision"):
        x = train.tensors[key]
        assert np.isfinite(x.numpy()).all()
        assert (x[~train.tensors[f"{key}_mask"]] == 0).all()   # padding stays exactly zero


def test_standardisation_uses_train_real_frames_only(tmp_path):
    path, raw = mmsa_pickle(tmp_path, unaligned=True)
    ds = load_dataset(data_path=str(path))
    tr = raw["train"]
    real = np.arange(20)[None] < np.asarray(tr["audio_lengths"])[:, None]
    frames = tr["audio"][real]
    assert np.allclose(ds["train"].stats["audio"]["mean"], frames.mean(0), atol=1e-5)
    assert np.allclose(ds["train"].stats["audio"]["std"], frames.std(0), atol=1e-5)
    std_train = ds["train"].tensors["audio"][ds["train"].tensors["audio_mask"]]
    assert np.allclose(std_train.mean(0).numpy(), 0, atol=1e-5)
    assert np.allclose(std_train.std(0, unbiased=False).numpy(), 1, atol=1e-4)
    # valid/test are transformed with the *train* numbers, not their own
    va = raw["valid"]
    real_va = np.arange(20)[None] < np.asarray(va["audio_lengths"])[:, None]
    expected = (va["audio"][real_va] - frames.mean(0)) / frames.std(0)
    got = ds["valid"].tensors["audio"][ds["valid"].tensors["audio_mask"]].numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert ds["valid"].stats is ds["train"].stats


def test_normalize_false_keeps_raw_values(tmp_path):
    path, raw = mmsa_pickle(tmp_path)
    ds = load_dataset(data_path=str(path), normalize=False)
    assert ds["train"].stats is None
    assert np.allclose(ds["train"].tensors["vision"].numpy(), raw["train"]["vision"])


def test_given_stats_are_applied_instead_of_fitted(tmp_path):
    path, _ = mmsa_pickle(tmp_path)
    fitted = load_dataset(data_path=str(path))
    other = mmsa_pickle(tmp_path, name="other.pkl", seed=5)[0]
    reused = load_dataset(data_path=str(other), stats=fitted["train"].stats)
    assert reused["train"].stats is fitted["train"].stats


def test_text_swap_replaces_text_of_any_width(tmp_path):
    path, raw = mmsa_pickle(tmp_path)
    rng = np.random.default_rng(3)
    for width in (300, 1024):
        swap = {s: {"text": rng.normal(0, 1, (n, 8, width)), "id": raw[s]["id"],
                    "text_lengths": np.full(n, 5)} for s, n in SIZES.items()}
        swap_path = tmp_path / f"text{width}.pkl"
        swap_path.write_bytes(pickle.dumps(swap))
        ds = load_dataset(data_path=str(path), text_features=str(swap_path))
        assert ds["test"].dims == {"text": width, "audio": 3, "vision": 4}
        assert (ds["test"].tensors["text_mask"].sum(1) == 5).all()
        assert ds["train"].stats["text"]["mean"].shape == (width,)


def test_text_swap_with_wrong_count_or_ids_says_so(tmp_path):
    path, raw = mmsa_pickle(tmp_path)
    short = {s: {"text": np.ones((n - 1, 8, 30))} for s, n in SIZES.items()}
    (tmp_path / "short.pkl").write_bytes(pickle.dumps(short))
    with pytest.raises(DataError, match=r"\[train\]: sample counts differ across keys: \{'the main file': 6, 'text': 5"):
        load_dataset(data_path=str(path), text_features=str(tmp_path / "short.pkl"))
    shuffled = {s: {"text": np.ones((n, 8, 30)), "id": raw[s]["id"][::-1]} for s, n in SIZES.items()}
    (tmp_path / "shuf.pkl").write_bytes(pickle.dumps(shuffled))
    with pytest.raises(DataError, match=r"ids differ from the main file's, first at index 0"):
        load_dataset(data_path=str(path), text_features=str(tmp_path / "shuf.pkl"))


def test_named_dataset_resolves_default_layout_and_explicit_path_wins(tmp_path):
    (tmp_path / "MOSI" / "Processed").mkdir(parents=True)
    path, _ = mmsa_pickle(tmp_path / "MOSI" / "Processed", name="aligned_50.pkl")
    assert load_dataset("mosi", data_dir=str(tmp_path))["train"].source == str(path)
    other, _ = mmsa_pickle(tmp_path, name="elsewhere.pkl")
    assert load_dataset("mosi", data_path=str(other), data_dir=str(tmp_path))["train"].source == str(other)


def test_missing_file_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mosei", data_dir=str(tmp_path), unaligned=True)
    msg = str(e.value)
    assert "MOSEI/Processed/unaligned_50.pkl" in msg and "mosei_senti_data_noalign.pkl" in msg
    assert "MMSA" in msg and "--dataset synthetic" in msg


def test_not_a_pickle_is_reported(tmp_path):
    (tmp_path / "x.pkl").write_text("hello")
    with pytest.raises(DataError, match="is not a readable pickle"):
        load_dataset(data_path=str(tmp_path / "x.pkl"))
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match=r"expected a dict with splits \['train', 'valid', 'test'\], found list"):
        load_dataset(data_path=str(tmp_path / "list.pkl"))


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r.pop("valid"), r"expected a dict with splits .* found \['test', 'train'\]"),
    (lambda r: r["train"].pop("vision"), r"\[train\]: missing key 'vision'"),
    (lambda r: r["test"].pop("regression_labels"), r"\[test\]: no label key; expected 'regression_labels'"),
    (lambda r: r["train"].update(audio=np.zeros((6, 8))), r"\[train\]: 'audio' has shape \(6, 8\); expected 3-D"),
    (lambda r: r["valid"].update(vision=np.zeros((2, 8, 4))), r"\[valid\]: sample counts differ.*'vision': 2"),
    (lambda r: r["train"]["regression_labels"].__setitem__(1, np.nan),
     r"\[train\]: 1 of 6 'regression_labels' are not finite scores in \[-3, 3\] \(first: nan\)"),
    (lambda r: r.update(test={k: v[:0] for k, v in r["test"].items()}), r"\[test\]: the split is empty"),
    # every per-sample array has the split's N (the Dataset takes its length from 'id')
    (lambda r: r["train"].update(id=r["train"]["id"][:2]), r"\[train\]: sample counts differ.*'id': 2"),
    (lambda r: r["test"].update(id=r["test"]["id"][:3]), r"\[test\]: sample counts differ.*'id': 3"),
    (lambda r: r["valid"].update(id=np.concatenate([r["valid"]["id"]] * 2)), r"\[valid\]: sample counts differ.*'id': 6"),
    (lambda r: r["train"].update(audio_lengths=[3, 3]), r"\[train\]: sample counts differ.*'audio_lengths': 2"),
    (lambda r: r["test"].update(text_bert=r["test"]["text_bert"][:1]), r"\[test\]: sample counts differ.*'text_bert': 1"),
    # broken content
    (lambda r: r["train"]["regression_labels"].__setitem__(0, 50),
     r"\[train\]: 1 of 6 'regression_labels' are not finite scores in \[-3, 3\] \(first: 50\)"),
    (lambda r: r["valid"].update(regression_labels=np.array(["positive"] * 3)),
     r"\[valid\]: 'regression_labels' is not numeric \(dtype <U8: text or raw bytes\)"),
    (lambda r: r["test"]["text_bert"][:, 1].__setitem__(slice(None), 0), r"\[test\]: the text mask .* marks no real token"),
    (lambda r: r["valid"].update(audio=np.ones((3, 8, 5))),
     r"feature widths differ between splits: train \{'text': 12, 'audio': 3, 'vision': 4\}, valid \{.*'audio': 5"),
])
def test_bad_file_content_gets_a_clear_message(tmp_path, breakage, message):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s]) for s, n in SIZES.items()}
    breakage(raw)
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=message):
        load_dataset(data_path=str(tmp_path / "bad.pkl"))


def test_lengths_longer_than_the_sequence_are_rejected(tmp_path):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s], len_a=20, len_v=15) for s, n in SIZES.items()}
    raw["train"]["audio_lengths"] = [30] * 6
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=r"lengths range 30..30, expected 0..20"):
        load_dataset(data_path=str(tmp_path / "bad.pkl"))


def test_fractional_lengths_are_rejected_not_truncated(tmp_path):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s], len_a=20, len_v=15) for s, n in SIZES.items()}
    raw["valid"]["vision_lengths"] = np.array([2.5, 3.0, 4.0])
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=r"\[valid\] 'vision_lengths': 1 lengths are not whole numbers \(first: 2.5\)"):
        load_dataset(data_path=str(tmp_path / "bad.pkl"))


def drop_text_of_two_aligned_samples(raw):
    """Samples 0 and 3 lose their tokens; without *_lengths, aligned audio/vision follow the text mask."""
    raw["train"]["text_bert"][[0, 3], 1] = 0
    for split in raw.values():
        split.pop("audio_lengths"), split.pop("vision_lengths")


@pytest.mark.parametrize("breakage, warning", [
    (lambda r: r["test"]["vision"].__setitem__(Ellipsis, 0),
     r"\[test\]: 'vision' has no real frame with a non-zero value in any of its 4 samples \(0 of its 128 values"),
    (lambda r: r["valid"]["audio"].__setitem__(Ellipsis, np.nan),
     r"\[valid\]: 'audio' has no real frame with a non-zero value .*\(72 of its 72 values were non-finite"),
    (drop_text_of_two_aligned_samples,
     r"\[train\]: 2 of 6 samples have no real text token \(and so no real audio/vision frame.*First: 'vid0\$_\$1'"),
])
def test_content_a_model_cannot_learn_from_is_warned_with_a_count(tmp_path, capsys, breakage, warning):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s]) for s, n in SIZES.items()}
    breakage(raw)
    (tmp_path / "odd.pkl").write_bytes(pickle.dumps(raw))
    load_dataset(data_path=str(tmp_path / "odd.pkl"), verbose=False)     # verbose=False silences info, not warnings
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and re.search(warning, err), err


class Payload:
    """What a hostile pickle does: have the unpickler call a function of its choice."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("where", ["data", "text-features"])
@pytest.mark.parametrize("call, name", [(exec, "builtins.exec"), (os.system, "posix.system")])
def test_pickle_payload_is_refused_by_name_and_never_executed(tmp_path, capsys, where, call, name):
    marker = tmp_path / "pwned"
    args = (f"open({str(marker)!r}, 'w')",) if call is exec else (f"touch {marker}",)
    path, raw = mmsa_pickle(tmp_path)
    swap = {s: {"text": np.ones((n, 8, 30))} for s, n in SIZES.items()}
    (raw if where == "data" else swap)["valid"]["id"] = Payload(call, args)
    (tmp_path / "mmsa.pkl").write_bytes(pickle.dumps(raw))
    (tmp_path / "swap.pkl").write_bytes(pickle.dumps(swap))
    with pytest.raises(DataError, match=rf"refused to load: the pickle asks for '{name}'"):
        load_dataset(data_path=str(path), text_features=str(tmp_path / "swap.pkl"))
    assert train.main(["--check-data", "--data-path", str(path)]) == (2 if where == "data" else 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err and (name in err) == (where == "data")
    assert not marker.exists()


@pytest.mark.parametrize("protocol, numpy_names", [(2, "numpy._core"), (4, "numpy._core"), (5, "numpy._core"),
                                                    (2, "numpy.core")])   # numpy 2.x; 1.x names
def test_pickles_of_numpy_1_and_2_load_with_every_protocol(tmp_path, protocol, numpy_names):
    path, raw, _ = mult_pickle(tmp_path)                    # bytes ids, float64 arrays, NaN
    mmsa, _ = mmsa_pickle(tmp_path)                         # str ids, float32 arrays, lists of numpy ints
    for source in (path, mmsa):
        raw = pickle.loads(source.read_bytes())
        raw["train"]["extra"] = [np.float32(1.5), np.int64(2), {1, 2}, (b"x", 1j, True, None)]
        blob = pickle.dumps(raw, protocol=protocol)
        if numpy_names == "numpy.core":     # as numpy 1.x writes them (protocol 2: names as plain text)
            blob = blob.replace(b"numpy._core.", b"numpy.core.")
            assert b"numpy.core.multiarray" in blob
        source.write_bytes(blob)
        ds = load_dataset(data_path=str(source), verbose=False)
        assert len(ds["train"]) == 6 and np.isfinite(ds["train"].tensors["audio"].numpy()).all()


def test_written_synthetic_pickle_loads_back_identically(tmp_path):
    out = tmp_path / "s.pkl"
    assert train.main(["--write-synthetic", str(out), "--synthetic-size", "tiny", "--unaligned"]) == 0
    raw = pickle.loads(out.read_bytes())
    assert "text_bert" in raw["train"] and "sarcastic" not in raw["train"]
    from_file = load_dataset(data_path=str(out), verbose=False)["valid"]
    built_in = load_dataset("synthetic", synthetic_size="tiny", unaligned=True, verbose=False)["valid"]
    for key, tensor in built_in.tensors.items():
        assert data.torch.equal(tensor, from_file.tensors[key]), key


def test_cli_prints_clear_error_instead_of_traceback(tmp_path, capsys):
    assert train.main(["--check-data", "--dataset", "mosi", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no MOSI features found") and "Traceback" not in err


@pytest.mark.parametrize("where, message", [("missing/s.pkl", "No such file or directory"), (".", "Is a directory")])
def test_write_synthetic_into_a_bad_place_says_so(tmp_path, capsys, where, message):
    assert train.main(["--write-synthetic", str(tmp_path / where), "--synthetic-size", "tiny"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("\ncannot write") and message in err and "Traceback" not in err
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}*.tmp")) and not list(tmp_path.rglob("*.tmp"))


def test_all_zero_frames_inside_the_real_length_are_masked_as_missing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s], pad_words=np.full(n, 8)) for s, n in SIZES.items()}
    raw["train"]["vision"][0, 2] = 0.0          # no face found on one frame
    raw["train"]["audio"][1, [0, 5]] = 0.0      # no voice on two frames
    raw["train"]["audio"][2, 3, 0] = 0.0        # one feature at 0 is a value, not a missing frame
    path = tmp_path / "blank.pkl"
    path.write_bytes(pickle.dumps(raw))
    ds = load_dataset(data_path=str(path))["train"]
    vision, audio = ds.tensors["vision_mask"], ds.tensors["audio_mask"]
    assert not vision[0, 2] and vision[0].sum() == 7 and ds.tensors["text_mask"][0].all()
    assert not audio[1, 0] and not audio[1, 5] and audio[1].sum() == 6
    assert audio[2].all()
    assert int(vision.sum() + audio.sum()) == 2 * 8 * SIZES["train"] - 3
    out = capsys.readouterr().out
    assert "masked frames whose features are all 0" in out and "audio 2, vision 1" in out


# ----------------------------------------------------------------------------
# Data identity, outliers, leakage and files that are subtly off

def test_fingerprint_is_stable_and_changes_with_seed_or_one_label(tmp_path):
    path, raw = mmsa_pickle(tmp_path)
    first = load_dataset(data_path=str(path), verbose=False)
    assert len({ds.fingerprint for ds in first.values()}) == 1
    assert re.fullmatch(r"v2:[0-9a-f]{16}", first["train"].fingerprint)
    assert load_dataset(data_path=str(path), normalize=False, verbose=False)["test"].fingerprint == first["test"].fingerprint
    reseeded, _ = mmsa_pickle(tmp_path, name="seed1.pkl", seed=1)
    raw["valid"]["regression_labels"][2] += 0.5
    relabelled = tmp_path / "label.pkl"
    relabelled.write_bytes(pickle.dumps(raw))
    others = {load_dataset(data_path=str(p), verbose=False)["train"].fingerprint for p in (reseeded, relabelled)}
    assert len(others | {first["train"].fingerprint}) == 3


@pytest.mark.parametrize("extreme", [1e30, 1e6])
def test_one_extreme_train_frame_cannot_erase_a_feature(tmp_path, capsys, extreme):
    path, raw = mmsa_pickle(tmp_path)
    raw["train"]["audio"][0, 0] = extreme          # one broken frame, every feature
    path.write_bytes(pickle.dumps(raw))
    ds = load_dataset(data_path=str(path), verbose=False)
    test = ds["test"].tensors["audio"][ds["test"].tensors["audio_mask"]]
    assert (test.std(0) > 0.3).all() and test.abs().max() < 10        # a healthy spread, on the train scale
    err = capsys.readouterr().err
    assert re.search(r"warning: .*clipped values far outside .*: train audio 3 values in 1 frame\. Many", err), err


def test_clean_data_clips_nothing_and_old_statistics_without_fences_still_apply(tmp_path, capsys):
    path, _ = mmsa_pickle(tmp_path)
    fitted = load_dataset(data_path=str(path))
    assert "clipped" not in capsys.readouterr().err
    old = {k: {s: v[s] for s in ("mean", "std")} for k, v in fitted["train"].stats.items()}
    again = load_dataset(data_path=str(path), stats=old)
    for key, tensor in fitted["test"].tensors.items():
        assert data.torch.equal(tensor, again["test"].tensors[key]), key


def test_modality_without_real_frames_is_warned_and_left_unscaled(tmp_path, capsys):
    path, raw = mmsa_pickle(tmp_path, unaligned=True)
    raw["train"]["audio_lengths"] = [0] * SIZES["train"]     # frames in the array, none of them real
    raw["test"]["vision_lengths"] = np.zeros(SIZES["test"], dtype=int)
    path.write_bytes(pickle.dumps(raw))
    ds = load_dataset(data_path=str(path), verbose=False)
    err = capsys.readouterr().err
    assert re.search(r"\[train\]: 'audio' has no real frame with a non-zero value in any of its 6 samples.*"
                     r"left unscaled \(mean 0, std 1\)", err)
    assert re.search(r"\[test\]: 'vision' has no real frame with a non-zero value in any of its 4 samples", err)
    stats = ds["train"].stats["audio"]
    assert (stats["mean"] == 0).all() and (stats["std"] == 1).all()
    real = np.arange(20)[None] < np.asarray(raw["valid"]["audio_lengths"])[:, None]
    assert np.allclose(ds["valid"].tensors["audio"][ds["valid"].tensors["audio_mask"]], raw["valid"]["audio"][real])


def test_ids_shared_between_splits_or_identical_splits_are_warned(tmp_path, capsys):
    path, raw = mmsa_pickle(tmp_path)
    raw["test"]["id"][[1, 3]] = raw["train"]["id"][[4, 5]]
    raw["valid"] = {k: v[:] for k, v in raw["train"].items()}      # valid is a copy of train
    path.write_bytes(pickle.dumps(raw))
    load_dataset(data_path=str(path), verbose=False)
    err = capsys.readouterr().err
    assert "splits train and valid are identical (6 samples with the same labels and text features)" in err
    assert "2 ids occur in both train and test (e.g. 'vid4$_$1')" in err and "valid and test" in err


def test_generated_ids_and_distinct_splits_raise_no_leakage_warning(tmp_path, capsys):
    path, raw = mmsa_pickle(tmp_path)
    for split in raw.values():
        split.pop("id")                   # ids become train_0, valid_0, ...: made up, not evidence
    path.write_bytes(pickle.dumps(raw))
    assert load_dataset(data_path=str(path), verbose=False)["valid"].ids[0] == "valid_0"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("length", [8, 10])
def test_text_swap_without_mask_takes_the_main_mask_when_the_length_matches(tmp_path, capsys, length):
    path, raw = mmsa_pickle(tmp_path)
    rng = np.random.default_rng(3)
    swap = {s: {"text": rng.normal(0, 1, (n, length, 30))} for s, n in SIZES.items()}    # BERT-like padding
    (tmp_path / "swap.pkl").write_bytes(pickle.dumps(swap))
    ds = load_dataset(data_path=str(path), text_features=str(tmp_path / "swap.pkl"), verbose=False)["train"]
    err = capsys.readouterr().err
    if length == 8:
        assert np.array_equal(ds.tensors["text_mask"].numpy(), raw["train"]["text_bert"][:, 1] > 0) and err == ""
    else:
        assert ds.tensors["text_mask"].all()           # every row non-zero: all taken as real, and said so
        assert "no 'text_lengths' or 'text_bert' and another token length" in err and "train 10 vs 8" in err


def test_lengths_are_honoured_when_every_modality_is_padded_to_one_length(tmp_path):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s]) for s, n in SIZES.items()}
    tr = raw["train"]
    tr["vision"][:] = rng.normal(0, 1, tr["vision"].shape)      # unaligned, padded to the text's length:
    tr["vision_lengths"] = np.full(6, 8)                       # every vision frame is real
    tr["audio_lengths"][0] = 1
    (tmp_path / "one_length.pkl").write_bytes(pickle.dumps(raw))
    ds = load_dataset(data_path=str(tmp_path / "one_length.pkl"), verbose=False)
    train, text_mask = ds["train"], raw["train"]["text_bert"][:, 1] > 0
    assert train.tensors["vision_mask"].all() and not train.aligned
    assert train.tensors["audio_mask"][0].sum() == 1 and np.array_equal(train.tensors["audio_mask"][1:], text_mask[1:])
    assert ds["valid"].aligned       # lengths equal to the text's: aligned, as in MMSA's aligned files


def test_aligned_file_storing_the_padded_length_still_masks_padding(tmp_path):
    path, raw = mmsa_pickle(tmp_path)
    for split in raw.values():
        split["audio_lengths"] = split["vision_lengths"] = np.full(len(split["id"]), 8)
    path.write_bytes(pickle.dumps(raw))
    ds = load_dataset(data_path=str(path), verbose=False)["test"]
    text_mask = raw["test"]["text_bert"][:, 1] > 0
    assert np.array_equal(ds.tensors["audio_mask"].numpy(), text_mask)
    assert np.array_equal(ds.tensors["vision_mask"].numpy(), text_mask)


RAGGED = [np.zeros((8, 3)), np.zeros((5, 3))] * 3
BAD_VALUES = [
    (lambda r: r["train"].update(audio=RAGGED), r"\[train\]: 'audio' is not numeric \(.*inhomogeneous"),
    (lambda r: r["train"].update(audio=np.array(RAGGED, dtype=object)),
     r"\[train\]: 'audio' has shape \(6,\) \(an object array: per-utterance arrays of different lengths\?\)"),
    (lambda r: r["valid"].update(vision=r["valid"]["vision"].astype(str)),
     r"\[valid\]: 'vision' is not numeric \(dtype <U"),
    (lambda r: r["test"].update(text_bert=r["test"]["text_bert"].astype(str).astype(object) + "x"),
     r"\[test\]: 'text_bert' is not numeric \(dtype object: text or raw bytes\)"),
    (lambda r: r["train"].update(regression_labels=np.zeros((6, 2))),
     r"\[train\]: 'regression_labels' has shape \(6, 2\); expected one sentiment score in \[-3, 3\] per sample"),
    (lambda r: r["train"].update(regression_labels=np.zeros((6, 1, 3))),
     r"\[train\]: 'regression_labels' has shape \(6, 1, 3\); expected one sentiment score"),
]


@pytest.mark.parametrize("breakage, message", BAD_VALUES)
def test_bad_values_name_file_split_and_key_in_load_and_summary(tmp_path, capsys, breakage, message):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s]) for s, n in SIZES.items()}
    breakage(raw)
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))} {message}"):
        load_dataset(data_path=str(path))
    assert train.main(["--check-data", "--data-path", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(message, err)


def test_mult_labels_of_shape_n_1_1_stay_fine(tmp_path):
    path, raw, _ = mult_pickle(tmp_path)
    assert raw["train"]["labels"].shape == (6, 1, 1)
    assert load_dataset(data_path=str(path), verbose=False)["train"].tensors["label"].shape == (6,)


# ----------------------------------------------------------------------------
# Data that cannot lie (issue 21): masks, memory bombs, empty modalities, text labels, every value

def test_text_lengths_in_the_main_file_set_the_text_mask(tmp_path):
    rng = np.random.default_rng(0)
    raw = {s: mmsa_split(n, rng, first_id=FIRST_ID[s]) for s, n in SIZES.items()}
    for split in raw.values():      # no text_bert: BERT-like text is non-zero at padding too
        split["text_lengths"] = split.pop("text_bert")[:, 1].sum(1).astype(int)
    (tmp_path / "lengths.pkl").write_bytes(pickle.dumps(raw))
    ds = load_dataset(data_path=str(tmp_path / "lengths.pkl"), verbose=False)["train"]
    assert np.array_equal(ds.tensors["text_mask"].sum(1).numpy(), raw["train"]["text_lengths"])
    assert not ds.tensors["text_mask"].all()


BOMBS = {   # what an 80-byte file can ask an allowed constructor for
    "bytearray(2**40)": (bytearray, (2 ** 40,), r"asks 'builtins.bytearray' for 1,099,511,627,776 bytes"),
    "bytes(2**40)": (bytes, (2 ** 40,), r"asks 'builtins.bytes' for 1,099,511,627,776 bytes"),
    "_reconstruct": (np._core.multiarray._reconstruct, (np.ndarray, (10 ** 6, 10 ** 6, 10), b"b"),
                     r"asks 'numpy._core.multiarray._reconstruct' for 10,000,000,000,000 bytes"),
    "scalar": (np._core.multiarray.scalar, (np.dtype(("V", 2 ** 31 - 1)),),
               r"asks 'numpy._core.multiarray.scalar' for 2,147,483,647 bytes"),
    "numpy.ndarray": (np.ndarray, ((10 ** 6, 10 ** 6, 10),), r"calls numpy.ndarray\(\(1000000, 1000000, 10\),\)"),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_allocating_constructors_cannot_ask_for_more_than_the_file_holds(tmp_path, bomb):
    call, args, message = BOMBS[bomb]
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps({"train": Payload(call, args), "valid": 0, "test": 0}, protocol=4))
    assert path.stat().st_size < 200
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}.*{message}"):
        load_dataset(data_path=str(path))


def test_a_length_in_the_pickle_itself_cannot_exhaust_memory(tmp_path):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (2 ** 40).to_bytes(8, "little") + b"abc")   # BINBYTES8 of 1 TiB
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_dataset(data_path=str(path))


def test_object_array_with_fewer_items_than_its_shape_is_refused_not_a_crash(tmp_path):
    blob = pickle.dumps({"train": np.array([1, 2, 3], dtype=object), "valid": 0, "test": 0}, protocol=2)
    assert blob.count(b"K\x03\x85") == 1       # the state's shape (3,): numpy would read 99 items from 3
    (tmp_path / "short.pkl").write_bytes(blob.replace(b"K\x03\x85", b"Kc\x85"))
    with pytest.raises(DataError, match=r"an object array of shape \(99,\) holds 3 items"):
        data.read_pickle(str(tmp_path / "short.pkl"))


@pytest.mark.parametrize("key, shape", [("audio", (6, 0, 3)), ("vision", (6, 8, 0))])
def test_modality_padded_to_length_zero_is_refused(tmp_path, capsys, key, shape):
    path, raw = mmsa_pickle(tmp_path)
    raw["train"][key] = np.zeros(shape)
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=rf"\[train\]: '{key}' has shape {re.escape(str(shape))}: no frame or no"):
        load_dataset(data_path=str(path))
    assert train.main(["--check-data", "--data-path", str(path)]) == 2 and "real nan" not in capsys.readouterr().out


@pytest.mark.parametrize("as_text", [lambda y: y.astype(str), lambda y: [str(v) for v in y],
                                     lambda y: y.astype(str).astype(object)])
def test_labels_stored_as_text_are_refused(tmp_path, as_text):
    path, raw = mmsa_pickle(tmp_path)
    raw["valid"]["regression_labels"] = as_text(raw["valid"]["regression_labels"])     # "1.0", numpy would parse it
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=r"\[valid\]: 'regression_labels' is not numeric \(dtype .*: text"):
        load_dataset(data_path=str(path))


def fortran_order(raw):
    for split in raw.values():
        split.update({k: np.asfortranarray(split[k]) for k in ("text", "audio", "vision")})


def one_value_of_the_last_sample(raw):
    raw["test"]["text"][-1, -1, -1] += 1.0


def two_thirds_of_train_rewritten(raw):
    raw["train"]["audio"][2:] *= -1.5


def two_utterances_swapped(raw):
    order = [1, 0, 2, 3, 4, 5]
    raw["train"].update({k: np.asarray(v)[order] for k, v in raw["train"].items()})


def test_fingerprint_covers_every_value_in_any_memory_layout(tmp_path):
    path, raw = mmsa_pickle(tmp_path)

    def fingerprint(change):
        changed = pickle.loads(pickle.dumps(raw))
        change(changed)
        path.write_bytes(pickle.dumps(changed))
        return load_dataset(data_path=str(path), verbose=False)["train"].fingerprint
    same = fingerprint(lambda r: None)
    assert same.startswith("v2:") and fingerprint(fortran_order) == same
    fortran = load_dataset(data_path=str(path), verbose=False)["valid"].tensors     # the file is in Fortran order
    assert all(fortran[k].is_contiguous() for k in ("text", "audio", "vision"))     # so the numbers are the same
    changes = (one_value_of_the_last_sample, two_thirds_of_train_rewritten, two_utterances_swapped)
    assert len({fingerprint(change) for change in changes} - {same}) == 3


# ----------------------------------------------------------------------------
# The data checks of train.py's command line (--check-data, --write-synthetic): written files whole or not at all

def test_data_flags_are_load_dataset_keywords_with_one_flag_each():
    group = next(g for g in train.build_parser()._action_groups if g.title.startswith("data"))
    dests = {a.dest for a in group._group_actions}
    assert dests == set(train.DATA_FLAGS) | {"check_data", "write_synthetic"}
    assert set(train.DATA_FLAGS) <= set(inspect.signature(load_dataset).parameters)


def test_cli_summarises_the_data_train_py_flags_name(capsys):
    assert train.main(["--check-data", "--synthetic-size", "tiny", "--synthetic-seed", "3", "--unaligned"]) == 0
    out = capsys.readouterr().out
    assert "train N=    96" in out and "audio (75, 5)" in out
    same = load_dataset(synthetic_size="tiny", synthetic_seed=3, unaligned=True, verbose=False)["test"]
    assert f"fingerprint {same.fingerprint}" in out


@pytest.mark.parametrize("flags", [["--dataset", "mosi"], ["--data-path", "x.pkl"], ["--text-features", "t.pkl"]])
def test_write_synthetic_refuses_other_data(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as e:
        train.main(["--write-synthetic", str(tmp_path / "s.pkl"), *flags])
    assert e.value.code == 2 and "--write-synthetic would ignore" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_write_synthetic_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.pkl"
    assert train.main(["--write-synthetic", str(path), "--synthetic-size", "tiny"]) == 0
    good = path.read_bytes()

    def disk_full(obj, f, protocol):
        f.write(b"half a pickle")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(synthetic.pickle, "dump", disk_full)
    assert train.main(["--write-synthetic", str(path), "--synthetic-size", "tiny", "--synthetic-seed", "1"]) == 1
    assert capsys.readouterr().err.startswith(f"\ncannot write {path} ([Errno 28] No space left on device)")
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["s.pkl"]


def test_negative_synthetic_seed_is_one_error_line(capsys):
    assert train.main(["--check-data", "--synthetic-size", "tiny", "--synthetic-seed", "-1"]) == 2
    assert capsys.readouterr().err == "error: synthetic seed -1 is negative; numpy's generators take seeds from 0 up\n"
