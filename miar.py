"""
miar.py -- MIAR: Modality Interaction and Alignment Representation fusion
(Zhu & Yu, arXiv 2601.02414), in compact einops-based PyTorch.

Only the paper's abstract is public. This file is the project's
reconstruction of each of its claims (shared/docs/MIAR.md):

  claim in the abstract                          where it lives here
  1. language, audio, vision feature sequences   MIAR.forward(text, audio, vision, *_mask)
  2. feature interaction -> four tokens          Interaction: z_t, z_a, z_v read the *other*
                                                 modalities, z_g reads all three
  3. contrastive learning + normalisation        alignment_loss (symmetric InfoNCE) and the
                                                 LayerNorms of Projection / Fusion (plus the
                                                 train-statistics standardisation in data.py)
  4. varying contributions of modalities         Fusion: per-sample softmax weights over tokens
  5. works across text models                    Projection reads any input width

Choices the abstract leaves open (change them here):
  * positional information: fixed sinusoidal, so any length (50, 375, 500) works;
  * each token has its own interaction blocks (no weight sharing across tokens);
  * a token's query is a learned vector plus the masked mean of its own modality,
    so attention can both pick a single event and start from pooled evidence;
  * z_g's query adds the mean of the three modality means;
  * the contrastive loss aligns z_t, z_a, z_v (not z_g) through one shared
    projection head, tau = 0.1 (sharp enough to separate a batch of 32);
  * fusion weights the LayerNormed tokens and an MLP reads all four at once,
    so it can express "text says X unless audio says Y", not only sums.

Shapes: b batch, l length, d width, h heads, k tokens, m modalities.
Masks are booleans, True = real frame.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import pack, rearrange, repeat, unpack

MODALITIES = ("t", "a", "v")
TOKENS = ("t", "a", "v", "g")
OTHERS = {"t": ("a", "v"), "a": ("t", "v"), "v": ("t", "a")}


@dataclass
class MIARConfig:
    text_dim: int = 768        # read from the data by the caller, never hard-coded
    audio_dim: int = 5
    vision_dim: int = 20
    d_model: int = 64
    heads: int = 4
    layers: int = 1            # unimodal encoder blocks per modality
    inter_layers: int = 1      # interaction (cross-attention) blocks per token
    dropout: float = 0.1
    interaction: str = "cross" # "cross": z_m reads the other two; "self": its own modality (ablation)
    tau: float = 0.1           # InfoNCE temperature
    lambda_con: float = 0.1    # weight of the alignment loss; 0 disables it
    normalize: bool = True     # False: no LayerNorm at projection / fusion (the ablation)
    mlp_ratio: int = 4         # hidden width of every MLP, in multiples of d_model

    def __post_init__(self):
        checks = [
            (self.interaction in ("cross", "self"), f"interaction must be 'cross' or 'self', got {self.interaction!r}"),
            (min(self.text_dim, self.audio_dim, self.vision_dim) > 0, "feature widths must be positive"),
            (self.d_model > 0 and self.heads > 0 and self.d_model % self.heads == 0,
             f"d_model ({self.d_model}) must be a positive multiple of heads ({self.heads})"),
            (self.layers >= 0 and self.inter_layers >= 1, "need layers >= 0 and inter_layers >= 1"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.tau > 0, f"tau must be positive, got {self.tau}"),
            (self.lambda_con >= 0, f"lambda_con must be >= 0, got {self.lambda_con}"),
            (self.mlp_ratio >= 1, f"mlp_ratio must be >= 1, got {self.mlp_ratio}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MIARConfig: {message}")


@dataclass
class MIAROutput:
    pred: torch.Tensor          # (b,) sentiment
    tokens: torch.Tensor        # (b, 4, d) [z_t, z_a, z_v, z_g]
    weights: torch.Tensor       # (b, 4) fusion weights: each token's per-sample contribution
    aligned: torch.Tensor       # (b, 3, d) L2-normalised p_t, p_a, p_v of the alignment loss
    attention: dict = None      # {token: (b, h, keys)} of its last interaction block, when asked


# ----------------------------------------------------------------------------
# Attention, written out so the math is visible

def masked_softmax(logits, key_mask):
    """Softmax over keys that are real frames. A row with no real key gets all-zero
    weights (not NaN): a sample whose audio is entirely missing simply reads nothing.
    logits (b, h, q, k), key_mask (b, k)."""
    mask = rearrange(key_mask, 'b k -> b 1 1 k')
    # a finite fill keeps the backward pass NaN-free; exp underflows to exactly 0
    weights = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max).softmax(dim=-1)
    return weights * mask


class Attention(nn.Module):
    """Masked multi-head attention: queries x read keys/values ctx."""

    def __init__(self, d, heads, dropout):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_kv = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, ctx, ctx_mask):
        q = rearrange(self.to_q(x), 'b q (h d) -> b h q d', h=self.heads)
        k, v = rearrange(self.to_kv(ctx), 'b k (two h d) -> two b h k d', two=2, h=self.heads)
        logits = torch.einsum('bhqd,bhkd->bhqk', q, k) / math.sqrt(q.shape[-1])
        attn = masked_softmax(logits, ctx_mask)                        # (b, h, q, k)
        y = torch.einsum('bhqk,bhkd->bhqd', self.drop(attn), v)
        return self.out(rearrange(y, 'b h q d -> b q (h d)')), attn


class MLP(nn.Sequential):
    def __init__(self, d, ratio, dropout):
        super().__init__(nn.Linear(d, ratio * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ratio * d, d), nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm Transformer block: x + Attn(LN x, ctx), then x + MLP(LN x).
    Self-attention when ctx is x itself, cross-attention otherwise."""

    def __init__(self, d, heads, ratio, dropout):
        super().__init__()
        self.norm_q, self.norm_ctx, self.norm_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.mlp = MLP(d, ratio, dropout)

    def forward(self, x, ctx, ctx_mask):
        y, attn = self.attn(self.norm_q(x), self.norm_ctx(ctx), ctx_mask)
        x = x + y
        return x + self.mlp(self.norm_mlp(x)), attn


# ----------------------------------------------------------------------------
# The components of MIAR

def sinusoidal_positions(length, d, device):
    """(length, d) fixed sinusoidal positions: no maximum length, so unaligned audio (375)
    and video (500) frames need no retraining of a position table."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq[: d // 2])
    return pe


class Projection(nn.Module):
    """Normalised projection of one modality into the shared width: LayerNorm(d_m) -> Linear -> + position.
    The LayerNorm comes *before* the Linear because raw modality features differ in scale
    by orders of magnitude (COVAREP vs Facet vs BERT)."""

    def __init__(self, d_in, d, normalize, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(d_in) if normalize else nn.Identity()
        self.proj = nn.Linear(d_in, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):                                              # (b, l, d_in) -> (b, l, d)
        x = self.proj(self.norm(x))
        return self.drop(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device))


class UnimodalEncoder(nn.Module):
    """Unimodal context encoder: masked self-attention blocks over one modality's frames."""

    def __init__(self, c):
        super().__init__()
        self.blocks = nn.ModuleList(Block(c.d_model, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.layers))

    def forward(self, h, mask):                                        # (b, l, d), (b, l)
        keep = rearrange(mask, 'b l -> b l 1')
        for block in self.blocks:
            h, _ = block(h, h, mask)
            h = torch.where(keep, h, 0.0)   # padding stays exactly 0 (where, not *, so no NaN*0)
        return h


def masked_mean(h, mask):
    """(b, l, d), (b, l) -> (b, d): mean over real frames; 0 for a sample with none."""
    mask = rearrange(mask, 'b l -> b l 1').to(h.dtype)
    return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class InteractionToken(nn.Module):
    """Feature interaction: one learned token cross-attends over a set of modality frames
    and becomes a global representation of what those frames say."""

    def __init__(self, c):
        super().__init__()
        self.query = nn.Parameter(torch.randn(c.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(c.d_model, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.inter_layers))

    def forward(self, start, ctx, ctx_mask):                           # (b, d), (b, n, d), (b, n)
        z = rearrange(self.query + start, 'b d -> b 1 d')
        for block in self.blocks:
            z, attn = block(z, ctx, ctx_mask)
        return rearrange(z, 'b 1 d -> b d'), rearrange(attn, 'b h 1 n -> b h n')


class Interaction(nn.Module):
    """The four tokens: z_t, z_a, z_v (each modality's view of the *other* two, or of
    itself when interaction='self') and z_g (the joint view of all three)."""

    def __init__(self, c):
        super().__init__()
        self.mode = c.interaction
        self.tokens = nn.ModuleDict({k: InteractionToken(c) for k in TOKENS})

    def keys_of(self, token):
        if token == "g":
            return MODALITIES
        return OTHERS[token] if self.mode == "cross" else (token,)

    def forward(self, h, masks):                                       # dicts m -> (b, l_m, d), (b, l_m)
        means = {m: masked_mean(h[m], masks[m]) for m in MODALITIES}
        means["g"] = torch.stack([means[m] for m in MODALITIES]).mean(0)
        z, attention = [], {}
        for k in TOKENS:
            keys = self.keys_of(k)
            ctx, _ = pack([h[m] for m in keys], 'b * d')                # (b, sum of l_m, d)
            ctx_mask, _ = pack([masks[m] for m in keys], 'b *')
            z_k, attention[k] = self.tokens[k](means[k], ctx, ctx_mask)
            z.append(z_k)
        return torch.stack(z, dim=1), attention                        # (b, 4, d)


class Fusion(nn.Module):
    """Weighted fusion: per-sample softmax weights over the four tokens (their contributions),
    then an MLP over the weighted tokens side by side. Reading them side by side, not summed,
    lets the MLP express interactions such as "positive words, unless the tone is sarcastic"."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c.d_model) if c.normalize else nn.Identity()
        self.score = nn.Linear(c.d_model, 1)
        self.head = nn.Sequential(nn.Linear(len(TOKENS) * c.d_model, c.d_model), nn.GELU(),
                                  nn.Dropout(c.dropout), nn.Linear(c.d_model, 1))

    def forward(self, z):                                              # (b, k, d)
        z = self.norm(z)
        alpha = rearrange(self.score(z), 'b k 1 -> b k').softmax(dim=-1)
        h = rearrange(z * rearrange(alpha, 'b k -> b k 1'), 'b k d -> b (k d)')
        return rearrange(self.head(h), 'b 1 -> b'), alpha


# ----------------------------------------------------------------------------
# Alignment: symmetric InfoNCE between the modality tokens

def info_nce(p_i, p_j, tau):
    """Symmetric InfoNCE for one modality pair: utterance n in modality i should be closest
    to utterance n in modality j among the batch. p_i, p_j (b, d); normalised here."""
    p_i, p_j = F.normalize(p_i, dim=-1), F.normalize(p_j, dim=-1)
    logits = p_i @ p_j.T / tau                                         # (b, b)
    target = torch.arange(len(p_i), device=p_i.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def alignment_loss(p_t, p_a, p_v, tau=0.1):
    """L_con: mean InfoNCE over the pairs (t, a), (t, v), (a, v)."""
    return (info_nce(p_t, p_a, tau) + info_nce(p_t, p_v, tau) + info_nce(p_a, p_v, tau)) / 3


# ----------------------------------------------------------------------------
# The model

class MIAR(nn.Module):
    """MIAR: projection -> unimodal encoders -> feature interaction (four tokens)
    -> contrastive alignment -> weighted fusion -> sentiment."""

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        dims = {"t": c.text_dim, "a": c.audio_dim, "v": c.vision_dim}
        self.project = nn.ModuleDict({m: Projection(dims[m], c.d_model, c.normalize, c.dropout) for m in MODALITIES})
        self.encode = nn.ModuleDict({m: UnimodalEncoder(c) for m in MODALITIES})
        self.interaction = Interaction(c)
        self.align_head = nn.Linear(c.d_model, c.d_model)   # shared: one space for all modalities
        self.fusion = Fusion(c)

    def forward(self, text, audio, vision, text_mask, audio_mask, vision_mask, return_attention=False):
        x = {"t": text, "a": audio, "v": vision}
        masks = {"t": text_mask.bool(), "a": audio_mask.bool(), "v": vision_mask.bool()}
        h = {}
        for m in MODALITIES:
            keep = rearrange(masks[m], 'b l -> b l 1')
            # zero padding before anything reads it, so its values can never leak
            h[m] = self.encode[m](torch.where(keep, self.project[m](torch.where(keep, x[m], 0.0)), 0.0), masks[m])
        z, attention = self.interaction(h, masks)                     # (b, 4, d)
        aligned = F.normalize(self.align_head(z[:, :3]), dim=-1)       # (b, 3, d)
        pred, weights = self.fusion(z)
        return MIAROutput(pred, z, weights, aligned, attention if return_attention else None)

    def objective(self, out, label):
        """L = L1(pred, y) + lambda_con * L_con."""
        l1 = F.l1_loss(out.pred, label)
        if self.config.lambda_con > 0 and len(label) > 1:
            con = alignment_loss(*out.aligned.unbind(dim=1), tau=self.config.tau)
        else:
            con = torch.zeros((), device=label.device)
        return {"loss": l1 + self.config.lambda_con * con, "l1": l1, "con": con}


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
