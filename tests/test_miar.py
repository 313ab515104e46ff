"""miar.py: shapes, masking, gradients, the loss by hand, one test per switch, convergence."""
import math

import numpy as np
import pytest
import torch

from miar import MIAR, MIARConfig, StatisticsPooling, alignment_loss, count_parameters, with_deviations

WIDTHS = {"text": 12, "audio": 5, "vision": 7}
SMALL = dict(text_dim=WIDTHS["text"], audio_dim=WIDTHS["audio"], vision_dim=WIDTHS["vision"],
             d_model=16, heads=2, mlp_ratio=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: thread start-up and sync would cost more than the math,
    and a busy CI machine turns that into seconds per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides):
    return MIARConfig(**{**SMALL, **overrides})


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MIAR(tiny(**overrides))


def make_batch(b=6, lengths=(8, 10, 12), widths=None, seed=1):
    """Random features with random padding; every sample keeps at least one real frame."""
    g = torch.Generator().manual_seed(seed)
    widths = widths or WIDTHS
    batch = {}
    for name, l in zip(("text", "audio", "vision"), lengths):
        batch[name] = torch.randn(b, l, widths[name], generator=g)
        real = torch.randint(1, l + 1, (b,), generator=g)
        batch[f"{name}_mask"] = torch.arange(l) < real[:, None]
    return batch


def outputs(out):
    return {"pred": out.pred, "tokens": out.tokens, "weights": out.weights, "aligned": out.aligned,
            "aligned_encoders": out.aligned_encoders}


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("lengths", [(10, 10, 10), (6, 11, 9)], ids=["aligned", "unaligned"])
def test_output_shapes_weights_and_unit_norm(lengths):
    out = make_model()(**make_batch(b=5, lengths=lengths))
    assert out.pred.shape == (5,)
    assert out.tokens.shape == (5, 4, 16)
    assert out.weights.shape == (5, 4)
    assert torch.allclose(out.weights.sum(-1), torch.ones(5))
    for p in (out.aligned, out.aligned_encoders):
        assert p.shape == (5, 3, 16)
        assert torch.allclose(p.norm(dim=-1), torch.ones(5, 3))
    assert out.attention is None


@pytest.mark.parametrize("text_dim", [300, 768, 1024])
def test_any_text_width_works(text_dim):
    widths = {**WIDTHS, "text": text_dim}
    out = make_model(text_dim=text_dim)(**make_batch(b=4, widths=widths))
    assert out.pred.shape == (4,) and torch.isfinite(out.pred).all()


def test_wrong_text_width_says_what_was_expected():
    with pytest.raises(ValueError, match="text_dim"):
        make_model()(**make_batch(widths={**WIDTHS, "text": 300}))


def test_non_boolean_mask_is_rejected():
    batch = make_batch()
    batch["audio_mask"] = batch["audio_mask"].float()       # ~ of a float mask would not mean "padding"
    with pytest.raises(ValueError, match="audio_mask: found torch.float32"):
        make_model()(**batch)


def test_default_model_has_under_a_million_parameters():
    assert count_parameters(MIAR(MIARConfig())) < 1_000_000


# ---------------------------------------------------------------- masking

def test_padding_does_not_change_outputs_or_gradients():
    """Values at padded frames, even NaN (0 * NaN = NaN), must not reach outputs or gradients."""
    model = make_model().eval()
    batch, label = make_batch(), torch.randn(6)

    def run(batch):
        model.zero_grad()
        out = model(**batch)
        model.objective(out, label)["loss"].backward()
        return {**outputs(out), **{name: p.grad.clone() for name, p in model.named_parameters()}}

    reference = run(batch)
    for garbage in (lambda x: 1e3 * torch.randn_like(x), lambda x: torch.full_like(x, float("nan"))):
        changed = dict(batch)
        for name in ("text", "audio", "vision"):
            pad = ~batch[f"{name}_mask"][..., None]
            changed[name] = torch.where(pad, garbage(batch[name]), batch[name])
        for key, value in run(changed).items():
            assert torch.equal(value, reference[key]), key


@pytest.mark.parametrize("modality", ["audio", "vision"])
def test_sample_with_no_real_frames_gives_finite_outputs_and_gradients(modality):
    model = make_model(dropout=0.0)
    batch = make_batch()
    batch[f"{modality}_mask"][0] = False                   # sample 0 has no audio (or vision) at all
    out = model(**batch, return_attention=True)
    for name, value in outputs(out).items():
        assert torch.isfinite(value).all(), name
    model.objective(out, torch.randn(6))["loss"].backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    # z_t reads audio and vision: sample 0 puts exactly zero weight on the empty one
    lengths = out.attention["keys"]["text"]
    per_modality = dict(zip(lengths, out.attention["text"][0].split(list(lengths.values()), dim=-1)))
    empty = per_modality[modality]
    assert torch.equal(empty, torch.zeros_like(empty))


def test_attention_maps_sum_to_one_over_real_keys_and_zero_on_padding():
    model = make_model().eval()
    batch = make_batch(lengths=(6, 11, 9))
    batch["audio_mask"][0] = batch["vision_mask"][0] = False   # z_t of sample 0 has no real key at all
    with torch.no_grad():
        attention = model(**batch, return_attention=True).attention
    assert attention["keys"] == {"text": {"audio": 11, "vision": 9}, "audio": {"text": 6, "vision": 9},
                                 "vision": {"text": 6, "audio": 11}, "joint": {"text": 6, "audio": 11, "vision": 9}}
    for token in ("text", "audio", "vision", "joint"):
        key_mask = torch.cat([batch[f"{m}_mask"] for m in attention["keys"][token]], dim=-1)[:, None, :]   # (b, 1, j)
        attn = attention[token]
        assert attn.shape == (6, 2, key_mask.shape[-1])
        has_keys = key_mask.any(dim=-1).float()                  # (b, 1): a query with no real key reads nothing
        assert torch.allclose(attn.sum(-1), has_keys.expand(6, 2))
        assert (attn.masked_select(~key_mask) == 0).all()


# ---------------------------------------------------------------- gradients and loss

@pytest.mark.parametrize("align", ["tokens", "encoders"])
def test_gradients_reach_every_parameter(align):
    model = make_model(dropout=0.0, align=align)
    out = model(**make_batch())
    model.objective(out, torch.randn(6))["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def info_nce_by_hand(a, b, tau):
    """Symmetric InfoNCE with python floats: normalise, cosine / tau, cross-entropy both ways."""
    unit = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]
    a, b = [unit(v) for v in a], [unit(v) for v in b]
    s = [[sum(x * y for x, y in zip(u, w)) / tau for w in b] for u in a]
    ce = lambda rows: np.mean([np.logaddexp.reduce(r) - r[n] for n, r in enumerate(rows)])
    return 0.5 * (ce(s) + ce([list(col) for col in zip(*s)]))


def test_alignment_loss_matches_hand_computation():
    p_t = [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]              # not unit norm: normalised inside
    p_a = [[0.8, 0.6], [-1.0, 1.0], [1.0, 1.0]]
    p_v = [[1.0, -1.0], [0.0, 1.0], [-2.0, 1.0]]
    tau = 0.5
    expected = (info_nce_by_hand(p_t, p_a, tau) + info_nce_by_hand(p_t, p_v, tau)
                + info_nce_by_hand(p_a, p_v, tau)) / 3
    got = alignment_loss(torch.tensor(p_t), torch.tensor(p_a), torch.tensor(p_v), tau=tau)
    assert math.isclose(got.item(), expected, rel_tol=1e-5)


def test_alignment_loss_is_lower_for_matched_pairs_than_shuffled():
    torch.manual_seed(0)
    p_t = torch.randn(8, 16)
    p_a, p_v = p_t + 0.1 * torch.randn(8, 16), p_t + 0.1 * torch.randn(8, 16)
    shuffle = torch.roll(torch.arange(8), 1)
    assert alignment_loss(p_t, p_a, p_v) < alignment_loss(p_t, p_a[shuffle], p_v[shuffle.flip(0)])


def test_contrastive_term_is_skipped_for_a_batch_of_one():
    model = make_model()
    losses = model.objective(model(**make_batch(b=1)), torch.randn(1))
    assert losses["con"].item() == 0.0 and torch.equal(losses["loss"], losses["l1"])


# ---------------------------------------------------------------- switches

def test_self_interaction_changes_outputs_with_the_same_weights():
    cross, self_ = make_model(interaction="cross").eval(), make_model(interaction="self").eval()
    self_.load_state_dict(cross.state_dict())               # same parameters under both settings
    batch = make_batch()
    with torch.no_grad():
        a, b = cross(**batch, return_attention=True), self_(**batch, return_attention=True)
    assert not torch.allclose(a.pred, b.pred)
    assert b.attention["keys"]["text"] == {"text": 8} and b.attention["keys"]["joint"] == a.attention["keys"]["joint"]


def test_normalize_false_drops_layernorms_and_changes_outputs():
    on, off = make_model(normalize=True).eval(), make_model(normalize=False).eval()
    layernorms = lambda model: {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert layernorms(on) - layernorms(off) == {"project.text.norm", "project.audio.norm", "project.vision.norm",
                                                 "interaction.pool.text.norm", "interaction.pool.audio.norm",
                                                 "interaction.pool.vision.norm", "fusion.norm"}
    assert all(".blocks." in n for n in layernorms(off))      # the Transformer blocks keep theirs
    batch = make_batch()
    with torch.no_grad():
        assert not torch.allclose(on(**batch).pred, off(**batch).pred)


def test_align_encoders_aligns_the_pooled_unimodal_encodings():
    tokens, encoders = make_model(align="tokens").eval(), make_model(align="encoders").eval()
    encoders.load_state_dict(tokens.state_dict())           # the switch adds no parameters
    batch, label = make_batch(), torch.randn(6)
    with torch.no_grad():
        a, b = tokens(**batch), encoders(**batch)
        assert torch.equal(a.pred, b.pred)                  # only training differs, through L_con
        assert torch.equal(a.aligned_encoders, b.aligned_encoders)
        assert torch.allclose(tokens.objective(a, label)["con"], alignment_loss(*a.aligned.unbind(1)))
        assert torch.allclose(encoders.objective(b, label)["con"], alignment_loss(*b.aligned_encoders.unbind(1)))
        assert not torch.allclose(tokens.objective(a, label)["con"], encoders.objective(b, label)["con"])
    # each encoding comes from its own modality alone: changing audio moves only the audio one,
    # whereas z_t and z_v read audio too
    changed = {**batch, "audio": batch["audio"] + 1.0}
    with torch.no_grad():
        out = encoders(**changed)
    moved = (out.aligned_encoders - b.aligned_encoders).abs().amax(dim=(0, 2))
    assert moved[1] > 0 and moved[0] == 0 and moved[2] == 0
    assert ((out.aligned - b.aligned).abs().amax(dim=(0, 2)) > 0).all()


def test_with_deviations_keeps_each_frame_and_its_distance_from_the_utterance_mean():
    x, mask = torch.randn(2, 5, 3), torch.tensor([[True] * 5, [True, True, False, False, False]])
    x[1, 2:] = float("nan")                                 # padding may hold anything
    out = with_deviations(x, mask)
    assert out.shape == (2, 5, 6) and torch.equal(out[..., :3][mask], x[mask])
    assert torch.allclose(out[0, :, 3:], x[0] - x[0].mean(0))
    assert torch.allclose(out[1, :2, 3:], x[1, :2] - x[1, :2].mean(0))
    # a speaker's baseline (the same shift on every frame) leaves the deviations unchanged
    assert torch.allclose(with_deviations(x + 7.0, mask)[..., 3:][mask], out[..., 3:][mask], atol=1e-5)


def test_statistics_pooling_reads_mean_spread_and_peak_of_real_frames_only():
    torch.manual_seed(0)
    pool = StatisticsPooling(tiny(normalize=False)).eval()
    h, mask = torch.randn(2, 6, 16), torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    stats = {}
    for k, name in enumerate(("mean", "spread", "peak")):     # an identity that picks one statistic at a time
        pool.proj.weight.data.zero_(); pool.proj.bias.data.zero_()
        pool.proj.weight.data[:, 16 * k:16 * (k + 1)] = torch.eye(16)
        stats[name] = pool(h, mask)
    real = h[1, :3]
    assert torch.allclose(stats["mean"][1], real.mean(0), atol=1e-6)
    assert torch.allclose(stats["spread"][1], (real.var(0, unbiased=False) + 1e-5).sqrt(), atol=1e-5)
    assert torch.equal(stats["peak"][1], real.amax(0))
    h[1, 3:] = 100.0                                        # padding never reaches any statistic
    assert torch.allclose(pool(h, mask)[1], stats["peak"][1])
    assert torch.equal(pool(h, torch.zeros(2, 6, dtype=torch.bool)), pool.proj.bias.expand(2, 16))   # no frame: 0 stats


@pytest.mark.parametrize("overrides", [dict(pool="mean"), dict(center=False), dict(text_dropout=0.0)],
                         ids=["pool-mean", "no-center", "no-text-dropout"])
def test_each_design_switch_runs_and_changes_the_model(overrides):
    default, switched = make_model(), make_model(**overrides)
    batch = make_batch()
    out = switched(**batch)
    assert out.pred.shape == (6,) and torch.isfinite(out.pred).all()
    if "text_dropout" in overrides:      # no parameter changes; only training-mode outputs do
        switched.load_state_dict(default.state_dict())
        assert torch.equal(switched.eval()(**batch).pred, default.eval()(**batch).pred)
        torch.manual_seed(3); a = default.train()(**batch).pred
        torch.manual_seed(3); b = switched.train()(**batch).pred
        assert not torch.allclose(a, b)
    else:
        assert count_parameters(switched) != count_parameters(default)


def test_lambda_con_zero_makes_loss_equal_l1():
    model = make_model(lambda_con=0.0)
    losses = model.objective(model(**make_batch()), torch.randn(6))
    assert losses["con"].item() == 0.0 and torch.equal(losses["loss"], losses["l1"])


@pytest.mark.parametrize("field, value", [
    ("interaction", "both"), ("align", "all"), ("d_model", 30), ("heads", 0), ("text_dim", 0), ("audio_dim", -1),
    ("inter_layers", 0), ("layers", -1), ("tau", 0.0), ("lambda_con", -0.1), ("dropout", 1.0), ("mlp_ratio", 0),
    ("pool", "max"), ("text_dropout", 1.0), ("text_dropout", -0.1),
])
def test_bad_config_raises_a_clear_value_error(field, value):
    with pytest.raises(ValueError, match=f"MIARConfig.{field}: found .*expected"):
        MIARConfig(**{field: value})


# ---------------------------------------------------------------- reproducibility and learning

def test_same_seed_gives_identical_outputs():
    batch = make_batch()
    a, b = make_model(seed=7), make_model(seed=7)
    torch.manual_seed(3)
    out_a = outputs(a(**batch))                              # train mode: dropout is seeded too
    torch.manual_seed(3)
    out_b = outputs(b(**batch))
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key


def test_overfits_a_single_batch():
    model = make_model(dropout=0.0, d_model=32, heads=4)
    batch = make_batch(b=8)
    label = 6 * torch.rand(8, generator=torch.Generator().manual_seed(2)) - 3   # in -3..3
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        losses = model.objective(model(**batch), label)
        if losses["l1"].item() < 0.05:
            break
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["l1"].item() < 0.05


def test_fused_attention_agrees_with_the_explicit_math():
    """Training uses PyTorch's fused kernel; return_attention uses the written-out math.
    Both must give the same outputs and gradients, also for a sample with no real key."""
    from miar import Attention
    torch.manual_seed(0)
    attn = Attention(tiny(dropout=0.0))
    x, ctx = torch.randn(4, 3, 16), torch.randn(4, 9, 16)
    mask = torch.arange(9) < torch.tensor([9, 4, 1, 0])[:, None]       # the last sample has no real key
    results = []
    for need_weights in (True, False):
        attn.zero_grad()
        y, _ = attn(x, ctx, mask, need_weights)
        y.pow(2).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in attn.parameters()]))
    (y1, g1), (y2, g2) = results
    assert torch.allclose(y1, y2, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))
    assert torch.equal(y2[3], attn.to_out.bias.expand(3, -1).detach())   # read nothing: only the output bias


def test_model_outputs_do_not_depend_on_asking_for_attention():
    model = make_model(dropout=0.0).eval()
    batch = make_batch()
    with torch.no_grad():
        plain, traced = model(**batch), model(**batch, return_attention=True)
    assert plain.attention is None and traced.attention is not None
    assert torch.allclose(plain.pred, traced.pred, atol=1e-5)
