"""
miar.py -- MIAR: Modality Interaction and Alignment Representation fusion for
multimodal sentiment (Zhu & Yu, arXiv 2601.02414), in plain PyTorch + einops.

Only the paper's abstract is public: no code, no full text. This file is the
project's reconstruction of the abstract's claims, read top to bottom in the order
data flows; the README's "The method, step by step" maps each claim to a class here.

Choices the abstract leaves open, and where to change each:
  * positions: fixed sinusoidal, computed for the actual length    -> sinusoidal_positions
  * the start of a token's query: learned vector + the mean,       -> StatisticsPooling,
    spread and peak of its own modality's frames (pool="stats");      Interaction.forward
    z_g's adds the mean of the three; pool="mean": the mean alone
  * audio/vision frames enter as they are and as deviations from    -> with_deviations
    their utterance's mean (unseen speakers; center=False: as they are)
  * dropout on the text features before their projection           -> MIAR.text_drop
  * what z_t, z_a, z_v read: the other two modalities ("cross"),   -> Interaction.keys_of
    or their own one ("self", the ablation)
  * no weight sharing: each token has its own stack of blocks      -> Interaction.__init__
  * alignment acts on z_t, z_a, z_v (not z_g), one shared head     -> MIAR.align_head
    pairwise ("tokens", method step 5); or the pooled unimodal encodings
    before any interaction, so no pair shares an input ("encoders") -> config.align, MIAR.objective
  * tau = 0.1 and lambda_con = 0.1                                 -> MIARConfig
  * fusion: an MLP over the weighted tokens side by side           -> Fusion

Axis names: b batch, l frames, d width, h heads, k tokens; i and j are the query
and key positions inside attention. Masks are booleans, True = real frame.
"""
import math
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import einsum, pack, rearrange

MODALITIES = ("text", "audio", "vision")     # also data.py's keys and train.py's --modalities
TOKENS = MODALITIES + ("joint",)             # z_t, z_a, z_v: one token per modality; z_g: the joint token
POSITION_BASE = 10000.0                      # longest sinusoid wavelength, as in "Attention is all you need"
QUERY_INIT_STD = 0.02                        # learned queries start small next to the pooled frames they join
VARIANCE_EPS = 1e-5                          # keeps the spread's sqrt differentiable for a one-frame utterance


def option(default, help, choices=None, neutral=False):
    """A config field that is also one of train.py's command-line flags (--d-model, ...), with this
    default and help: a new hyperparameter is one line here, and the CLI and results files follow.
    neutral=True: the default is the model (or training) without this field, as with a fork's new idea;
    run records leave it out at its default, so folders recorded before it existed still match."""
    return field(default=default, metadata={"help": help, "choices": choices, "neutral": neutral})


@dataclass
class MIARConfig:
    """Every model hyperparameter, in one place; a checkpoint stores it and rebuilds the model from it."""
    text_dim: int = 768          # the feature widths are read from the data by the caller, never
    audio_dim: int = 5           # hard-coded (claim 5), so they are no flags
    vision_dim: int = 20
    d_model: int = option(64, "shared width of all modalities and tokens")
    heads: int = option(4, "attention heads (must divide --d-model)")
    layers: int = option(1, "unimodal encoder blocks per modality (0: projection only)")
    inter_layers: int = option(1, "interaction (cross-attention) blocks per token")
    dropout: float = option(0.1, "dropout in projections, blocks and fusion")
    interaction: str = option("cross", "cross: each modality token reads the other two modalities; "
                                       "self: only its own (the ablation)", ("cross", "self"))
    # logits = cosine / tau span [-10, 10]: sharp enough to single out one positive among a batch of 32
    tau: float = option(0.1, "InfoNCE temperature")
    lambda_con: float = option(0.1, "weight of the contrastive alignment loss (0 switches it off)")
    align: str = option("tokens", "what the contrastive loss aligns: the modality tokens (method step 5), or the "
                                  "pooled unimodal encodings before any interaction (MIAR.objective says why)",
                        ("tokens", "encoders"))
    normalize: bool = option(True, "feature standardisation and the LayerNorms of projection, pooling and "
                                   "fusion (--no-normalize: the ablation)")
    mlp_ratio: int = option(4, "hidden width of the blocks' MLPs, in multiples of --d-model")
    pool: str = option("stats", "what each token's query starts from: the mean, spread and peak of its modality's "
                                "frames (StatisticsPooling), or their mean alone", ("stats", "mean"))
    center: bool = option(True, "audio/vision frames enter as they are and as deviations from their utterance's "
                                "mean (--no-center: as they are only)")
    text_dropout: float = option(0.3, "dropout on the text features themselves, before their projection")

    def __post_init__(self):
        checks = [
            *[(f.name, getattr(self, f.name) in f.metadata["choices"], " or ".join(map(repr, f.metadata["choices"])))
              for f in fields(self) if f.metadata.get("choices")],
            ("text_dropout", 0 <= self.text_dropout < 1, "a probability in [0, 1)"),
            *[(f"{m}_dim", getattr(self, f"{m}_dim") > 0, "a positive width") for m in MODALITIES],
            ("heads", self.heads > 0, "a positive number of heads"),
            ("d_model", self.d_model > 0 and self.heads > 0 and self.d_model % self.heads == 0,
             f"a positive multiple of heads={self.heads}"),
            ("layers", self.layers >= 0, "0 or more blocks"),
            ("inter_layers", self.inter_layers >= 1, "1 or more blocks (the tokens are made there)"),
            ("dropout", 0 <= self.dropout < 1, "a probability in [0, 1)"),
            ("tau", self.tau > 0, "a positive temperature"),
            ("lambda_con", self.lambda_con >= 0, "a weight >= 0 (0 switches alignment off)"),
            ("mlp_ratio", self.mlp_ratio >= 1, "an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"MIARConfig.{name}: found {getattr(self, name)!r}, expected {expected}")

    def for_data(self, datasets):
        """This config with the feature widths of `datasets` (load_dataset's), read, never assumed (claim 5)."""
        return replace(self, **{f"{m}_dim": d for m, d in datasets["train"].dims.items()})


@dataclass
class MIAROutput:
    pred: torch.Tensor           # (b,) sentiment, unbounded regression (labels lie in -3..3)
    tokens: torch.Tensor         # (b, 4, d) [z_t, z_a, z_v, z_g]
    weights: torch.Tensor        # (b, 4) fusion weights alpha: each token's per-sample contribution
    aligned: torch.Tensor        # (b, 3, d) L2-normalised p_t, p_a, p_v from the tokens (align="tokens")
    aligned_encoders: torch.Tensor  # (b, 3, d) the same head on masked-mean(H_m), each modality alone ("encoders")
    # Only with return_attention=True: {"text": (b, h, j), "audio": ..., "vision": ..., "joint": ...}, each
    # token's attention in its last interaction block over its keys, and "keys": {"text": {"audio": l_a,
    # "vision": l_v}, ...}
    # naming, in order, the modalities (and their lengths) concatenated along j.
    attention: dict | None = None


# Attention, written out so the math is visible ----------------------------------------------------

def masked_softmax(logits, key_mask):
    """Attention weights over the real frames only. logits (b, h, i, j), key_mask (b, j).

    Padded keys get the most negative *finite* float, not -inf: a row whose keys are all
    padding (a sample with no audio at all) would be softmax(-inf, ..., -inf) = NaN, in the
    forward and in the backward pass. With a finite fill that row comes out uniform, and the
    multiplication by the mask makes it exactly zero: the query reads nothing. In every other
    row the filled keys underflow to exactly 0, so values at padded frames cannot leak in."""
    key_mask = rearrange(key_mask, 'b j -> b 1 1 j')
    weights = logits.masked_fill(~key_mask, -torch.finfo(logits.dtype).max).softmax(dim=-1)
    return weights * key_mask


class Attention(nn.Module):
    """Masked multi-head attention: queries x read the real frames of a context."""

    def __init__(self, c):
        super().__init__()
        self.heads = c.heads
        self.to_q = nn.Linear(c.d_model, c.d_model, bias=False)
        self.to_kv = nn.Linear(c.d_model, 2 * c.d_model, bias=False)
        self.to_out = nn.Linear(c.d_model, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, ctx, ctx_mask, need_weights=False):  # (b, i, d), (b, j, d), (b, j)
        q = rearrange(self.to_q(x), 'b i (h d) -> b h i d', h=self.heads)
        k, v = rearrange(self.to_kv(ctx), 'b j (two h d) -> two b h j d', two=2, h=self.heads)
        if need_weights:      # the math, step by step, keeping the map for plots
            logits = einsum(q, k, 'b h i d, b h j d -> b h i j') / math.sqrt(q.shape[-1])
            attn = masked_softmax(logits, ctx_mask)
            y = einsum(attn, v, 'b h i j, b h j d -> b h i d')
        else:                 # the same result from PyTorch's fused kernel, which never builds the
            # (b, h, i, j) map, which on 500 video frames dominates a CPU epoch (tests check both paths agree)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=rearrange(ctx_mask, 'b j -> b 1 1 j'))
            y = torch.where(rearrange(ctx_mask.any(dim=-1), 'b -> b 1 1 1'), y, 0.0)  # no real key: read nothing
            attn = None
        # dropout on the output, not on the map: the map stays the distribution one plots,
        # and CPU dropout (one random draw per element) is not free on (b, h, i, j)
        return self.drop(self.to_out(rearrange(y, 'b h i d -> b i (h d)'))), attn


class MLP(nn.Sequential):
    """Position-wise feed-forward network of a Transformer block."""

    def __init__(self, c):
        hidden = c.mlp_ratio * c.d_model
        super().__init__(nn.Linear(c.d_model, hidden), nn.GELU(),   # one dropout, on the output
                         nn.Linear(hidden, c.d_model), nn.Dropout(c.dropout))


class Block(nn.Module):
    """Pre-norm Transformer block: x + Attention(LN x, context), then x + MLP(LN x).

    cross=False: self-attention, the context is x itself (the unimodal encoders).
    cross=True: the context is another residual stream (frames of other modalities),
    so it gets its own LayerNorm; only the query stream x is updated."""

    def __init__(self, c, cross):
        super().__init__()
        self.norm_x = nn.LayerNorm(c.d_model)
        self.norm_ctx = nn.LayerNorm(c.d_model) if cross else None
        self.attn = Attention(c)
        self.norm_mlp = nn.LayerNorm(c.d_model)
        self.mlp = MLP(c)

    def forward(self, x, ctx, ctx_mask, need_weights=False):
        q = self.norm_x(x)
        y, attn = self.attn(q, q if self.norm_ctx is None else self.norm_ctx(ctx), ctx_mask, need_weights)
        x = x + y
        return x + self.mlp(self.norm_mlp(x)), attn


# Method steps 2-3: projection, unimodal context encoders -----------------------------------------

def sinusoidal_positions(length, d, device):
    """(length, d) fixed sinusoidal positions. Fixed rather than learned: there is no table
    with a maximum length, so aligned (50) and unaligned audio (375) / video (500) frames all work."""
    position = torch.arange(length, device=device, dtype=torch.float32)
    frequency = POSITION_BASE ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    angle = einsum(position, frequency, 'l, f -> l f')
    return rearrange([angle.sin(), angle.cos()], 'two l f -> l (f two)')[:, :d]   # sin, cos interleaved


class Projection(nn.Module):
    """Normalised projection of one modality into the shared width: LayerNorm -> Linear -> + position.

    The LayerNorm comes *before* the Linear: raw features differ in scale by orders of
    magnitude between modalities (COVAREP audio, Facet vision, BERT text), the "large
    distribution gap" the abstract normalises against."""

    def __init__(self, d_in, c):
        super().__init__()
        # no affine: a per-feature scale and shift right before a Linear is absorbed by it, and
        # dropping it saves computing a (b, l, d_in) gradient for 768-d text
        self.norm = nn.LayerNorm(d_in, elementwise_affine=False) if c.normalize else nn.Identity()
        self.proj = nn.Linear(d_in, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, mask):                               # (b, l, d_in), (b, l) -> (b, l, d)
        keep = rearrange(mask, 'b l -> b l 1')
        # padded frames may hold anything (-inf, NaN, leftovers): zero them before any
        # arithmetic, because attention's 0 weight times a NaN value is still NaN
        x = self.proj(self.norm(torch.where(keep, x, 0.0)))
        x = self.drop(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype))
        return torch.where(keep, x, 0.0)


class UnimodalEncoder(nn.Module):
    """Unimodal context encoder: masked self-attention blocks over one modality's frames -> H_m."""

    def __init__(self, c):
        super().__init__()
        self.blocks = nn.ModuleList(Block(c, cross=False) for _ in range(c.layers))

    def forward(self, h, mask):                               # (b, l, d), (b, l)
        keep = rearrange(mask, 'b l -> b l 1')
        for block in self.blocks:
            h, _ = block(h, h, mask)
            h = torch.where(keep, h, 0.0)    # padding stays exactly 0 (where, not *: NaN * 0 = NaN)
        return h


def masked_mean(h, mask):
    """(b, l, d), (b, l) -> (b, d): mean over the real frames; 0 for a sample with none."""
    total = torch.where(rearrange(mask, 'b l -> b l 1'), h, 0.0).sum(dim=1)
    return total / rearrange(mask.sum(dim=1).clamp(min=1), 'b -> b 1')


def with_deviations(x, mask):
    """(b, l, d) -> (b, l, 2d): each frame as it is and as its deviation from the utterance's mean.

    Test speakers are unseen, and a person's baseline voice and resting face are not sentiment:
    what holds across people is how the frames move *within* an utterance. The raw frame is kept
    beside it, so the level (loudness grows with arousal) is not lost; the model weighs the two."""
    return torch.cat([x, x - rearrange(masked_mean(x, mask), 'b d -> b 1 d')], dim=-1)


class StatisticsPooling(nn.Module):
    """Pooled statistics of one modality's frames: their mean, spread and peak over time, projected to d.

    Classical fusion (TFN, LMF) gets real value from weak audio/vision by averaging it over time; a
    mean alone misses how much a cue *moves* (pitch movement rises with arousal) and a cue present on
    a few frames only (a smile on a quarter of them), which the spread and the peak keep. These are
    the "functionals" of speech-emotion features and the statistics pooling of speaker embeddings."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(3 * c.d_model) if c.normalize else nn.Identity()
        self.proj = nn.Linear(3 * c.d_model, c.d_model)

    def forward(self, h, mask):                                  # (b, l, d), (b, l) -> (b, d)
        mean = masked_mean(h, mask)
        spread = (masked_mean((h - rearrange(mean, 'b d -> b 1 d')) ** 2, mask) + VARIANCE_EPS).sqrt()
        peak = torch.where(rearrange(mask, 'b l -> b l 1'), h, -torch.finfo(h.dtype).max).amax(dim=1)
        peak = torch.where(rearrange(mask.any(dim=1), 'b -> b 1'), peak, 0.0)   # no real frame: 0, not -max
        return self.proj(self.norm(torch.cat([mean, spread, peak], dim=-1)))


# Method step 4: feature interaction -> four tokens -----------------------------------------------

class InteractionToken(nn.Module):
    """Feature interaction: one learned token cross-attends over modality frames and becomes
    a global representation of what they say."""

    def __init__(self, c):
        super().__init__()
        self.query = nn.Parameter(torch.randn(c.d_model) * QUERY_INIT_STD)
        self.blocks = nn.ModuleList(Block(c, cross=True) for _ in range(c.inter_layers))

    def forward(self, start, ctx, ctx_mask, need_weights=False):  # (b, d), (b, j, d), (b, j)
        z = rearrange(self.query + start, 'b d -> b 1 d')    # a single query position, i = 1
        for block in self.blocks:
            z, attn = block(z, ctx, ctx_mask, need_weights)
        return rearrange(z, 'b 1 d -> b d'), attn if attn is None else rearrange(attn, 'b h 1 j -> b h j')


class Interaction(nn.Module):
    """The four feature tokens: z_t, z_a, z_v (each modality's global view of what the *other*
    two say, or of itself when interaction='self') and z_g (the joint view of all three).

    Each token has its own blocks (no weight sharing): reading audio+vision for text is not
    the same job as reading text+vision for audio. Both switch settings build the same
    parameters, so one state_dict loads into either."""

    def __init__(self, c):
        super().__init__()
        self.mode = c.interaction
        self.pool = nn.ModuleDict({m: StatisticsPooling(c) for m in MODALITIES}) if c.pool == "stats" else None
        self.tokens = nn.ModuleDict({k: InteractionToken(c) for k in TOKENS})

    def keys_of(self, token):
        if token == "joint":
            return MODALITIES
        return tuple(m for m in MODALITIES if m != token) if self.mode == "cross" else (token,)

    def forward(self, h, masks, need_weights=False):          # dicts m -> (b, l_m, d), (b, l_m)
        # A query starts from the pooled frames of its own modality (their statistics, or their
        # mean with pool="mean"): evidence spread over many frames is there from the start, and
        # attention is left to catch single events and to read the other modalities.
        start = {m: self.pool[m](h[m], masks[m]) if self.pool else masked_mean(h[m], masks[m]) for m in MODALITIES}
        start["joint"] = torch.stack([start[m] for m in MODALITIES]).mean(dim=0)
        z, attention, keys = [], {}, {}
        for k in TOKENS:
            ctx, shapes = pack([h[m] for m in self.keys_of(k)], 'b * d')      # (b, l_1 + l_2 [+ l_3], d)
            ctx_mask, _ = pack([masks[m] for m in self.keys_of(k)], 'b *')
            z_k, attention[k] = self.tokens[k](start[k], ctx, ctx_mask, need_weights)
            keys[k] = {m: shape[0] for m, shape in zip(self.keys_of(k), shapes)}
            z.append(z_k)
        return torch.stack(z, dim=1), ({**attention, "keys": keys} if need_weights else None)  # (b, 4, d)


# Method step 5: alignment, symmetric InfoNCE between modality tokens -----------------------------

def info_nce(p_i, p_j, tau):
    """Symmetric InfoNCE for one pair of modalities: utterance n seen in modality i should be
    closer to utterance n in modality j than to any other utterance of the batch, both ways.
    p_i, p_j (b, d), L2-normalised here (a no-op if they already are)."""
    p_i, p_j = F.normalize(p_i, dim=-1), F.normalize(p_j, dim=-1)
    logits = p_i @ p_j.T / tau                                # (b, b) cosine similarities / tau
    target = torch.arange(len(p_i), device=p_i.device)        # positives on the diagonal
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def alignment_loss(p_t, p_a, p_v, tau=0.1):
    """L_con: the mean of InfoNCE over the pairs (t, a), (t, v), (a, v)."""
    return (info_nce(p_t, p_a, tau) + info_nce(p_t, p_v, tau) + info_nce(p_a, p_v, tau)) / 3


# Method step 6: fusion ---------------------------------------------------------------------------

class Fusion(nn.Module):
    """Representation fusion: per-sample softmax weights over the four tokens (their
    contributions), then an MLP over the weighted tokens side by side.

    Concatenated, not summed: the hidden GELU units see every token's features at once and
    can express "the words say positive *unless* the tone says sarcastic", whereas a sum fed
    to a linear head could only add evidence up."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c.d_model) if c.normalize else nn.Identity()
        self.score = nn.Linear(c.d_model, 1, bias=False)   # no bias: a softmax ignores a shift shared by all tokens
        self.head = nn.Sequential(nn.Linear(len(TOKENS) * c.d_model, c.d_model), nn.GELU(),
                                  nn.Dropout(c.dropout), nn.Linear(c.d_model, 1))

    def forward(self, z):                                     # (b, k, d)
        z = self.norm(z)
        alpha = rearrange(self.score(z), 'b k 1 -> b k').softmax(dim=-1)
        h = rearrange(z * rearrange(alpha, 'b k -> b k 1'), 'b k d -> b (k d)')
        return rearrange(self.head(h), 'b 1 -> b'), alpha


# The model, and method step 7: the objective -----------------------------------------------------

class MIAR(nn.Module):
    """MIAR: projection -> unimodal encoders -> feature interaction (four tokens)
    -> contrastive alignment -> weighted fusion -> sentiment."""

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        frame = 2 if c.center else 1       # with_deviations doubles the audio/vision frame
        widths = {"text": c.text_dim, "audio": frame * c.audio_dim, "vision": frame * c.vision_dim}
        # 1.3 k utterances against 768-d text: the text projection alone can memorise the training set
        # in a few epochs, before the weaker audio/vision cues are learned. Dropping text features
        # (not frames) makes it spread its weight and buys the other modalities those epochs.
        self.text_drop = nn.Dropout(c.text_dropout)
        self.project = nn.ModuleDict({m: Projection(widths[m], c) for m in MODALITIES})
        self.encode = nn.ModuleDict({m: UnimodalEncoder(c) for m in MODALITIES})
        self.interaction = Interaction(c)
        # one head shared by the three modalities: the tokens already live in one width, and
        # sharing W makes the contrastive loss align z_m themselves, not three free projections
        self.align_head = nn.Linear(c.d_model, c.d_model)
        self.fusion = Fusion(c)

    def forward(self, text, audio, vision, text_mask, audio_mask, vision_mask, return_attention=False):
        x = {"text": text, "audio": audio, "vision": vision}
        masks = {"text": text_mask, "audio": audio_mask, "vision": vision_mask}
        self.check_inputs(x, masks)
        x["text"] = self.text_drop(x["text"])
        if self.config.center:     # not the text: the mean of contextual word vectors is the sentence's gist
            for m in ("audio", "vision"):
                x[m] = with_deviations(x[m], masks[m])
        h = {m: self.encode[m](self.project[m](x[m], masks[m]), masks[m]) for m in MODALITIES}
        z, attention = self.interaction(h, masks, return_attention)        # (b, 4, d)
        aligned = F.normalize(self.align_head(z[:, :len(MODALITIES)]), dim=-1)   # (b, 3, d), z_g left out
        # each modality's pooled encoding on its own, before any modality meets another
        pooled = torch.stack([masked_mean(h[m], masks[m]) for m in MODALITIES], dim=1)   # (b, 3, d)
        aligned_encoders = F.normalize(self.align_head(pooled), dim=-1)
        pred, weights = self.fusion(z)
        return MIAROutput(pred, z, weights, aligned, aligned_encoders, attention)

    def check_inputs(self, x, masks):
        for m in MODALITIES:
            width = getattr(self.config, f"{m}_dim")
            if x[m].ndim != 3 or x[m].shape[-1] != width:
                raise ValueError(f"{m}: found shape {tuple(x[m].shape)}, expected (batch, frames, {width}); "
                                 f"build MIARConfig({m}_dim=...) from the data's feature width")
            if masks[m].dtype != torch.bool or masks[m].shape != x[m].shape[:2]:
                raise ValueError(f"{m}_mask: found {masks[m].dtype} {tuple(masks[m].shape)}, expected "
                                 f"torch.bool {tuple(x[m].shape[:2])} with True = real frame")

    def objective(self, out, label):
        """L = L1(pred, y) + lambda_con * L_con. L_con needs negatives, so it is skipped (0)
        for a batch of one, and not computed at all when lambda_con = 0.

        align="tokens" (method step 5): InfoNCE between the pairs of modality tokens. With cross
        interaction, z_t and z_a both read the vision frames (and so on), so a pair can be
        matched through the frames it shares, noise included (notebook 04), not only through
        what the modalities agree on. align="encoders" aligns the pooled unimodal encodings
        instead: each is computed from its own modality alone, so a pair can only be matched
        through what the modalities of an utterance have in common."""
        if label.shape != out.pred.shape:
            raise ValueError(f"label: found shape {tuple(label.shape)}, expected {tuple(out.pred.shape)} like pred")
        l1 = F.l1_loss(out.pred, label)
        if self.config.lambda_con > 0 and len(label) > 1:
            p = out.aligned if self.config.align == "tokens" else out.aligned_encoders
            con = alignment_loss(*p.unbind(dim=1), tau=self.config.tau)
        else:
            con = out.pred.new_zeros(())
        return {"loss": l1 + self.config.lambda_con * con, "l1": l1, "con": con}


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
