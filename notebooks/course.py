"""What the course notebooks share, and nothing else: one palette, the course's trained model, and
notebook 00's picture of the model. The method lives in the modules at the repo root; nothing
here computes anything a notebook teaches."""
import json
import os

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

import runs      # the notebook's first cell has put the repo root on the path
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------
# One colour per modality and per category, in every notebook: a hue means one thing across the
# course. Black and greys mean no category: the plain (not sarcastic) utterances, reference lines,
# curves and series of anything else (GREYS). Maps use colour scales (viridis, Greys).
COLORS = {
    # the modalities, and the joint token z_g
    "text": "tab:blue", "audio": "tab:orange", "vision": "tab:green", "joint": "tab:purple",
    # the synthetic story's hidden flag (notebook 01)
    "sarcastic": "tab:red", "plain": "tab:gray",
    # the sign of a label
    "negative": "tab:brown", "neutral": "tab:olive", "positive": "tab:cyan",
}
GREYS = ["black", "0.45", "0.65", "0.8"]                 # several series that are no category
TOKEN_COLORS = [COLORS[k] for k in ("text", "audio", "vision", "joint")]   # z_t, z_a, z_v, z_g (miar.TOKENS)

# ----------------------------------------------------------------------------
# The course's trained model. Trained once, by the first notebook that needs it, into runs/course;
# afterwards only loaded. Ten epochs keep that first training short, so the model is short-trained:
# `load_course_model` says so, with its own test error and that of the README's full run.
COURSE_OUT = os.path.join(ROOT, "runs", "course")
COURSE_RUN = ["--dataset", "synthetic", "--epochs", "10", "--out", os.path.relpath(COURSE_OUT), "--resume"]
COURSE_SEED = 1111                                      # train.py's first default seed
FULL_RUN = os.path.join(ROOT, "results", "synthetic", "full", "results.json")   # the README's synthetic row


def load_course_model():
    """(model in eval mode, its datasets, its checkpoint): training it first if no finished run is there."""
    seed_dir = os.path.join(COURSE_OUT, f"seed_{COURSE_SEED}")
    if not os.path.isfile(os.path.join(seed_dir, "result.json")):
        print("training the course model (once; its later uses only load it) ...")
        if train.main(COURSE_RUN) != 0:
            raise RuntimeError(f"training the course model failed (the message is above); delete {COURSE_OUT} "
                               f"and run this cell again")
    model, datasets, ckpt = runs.load_trained(os.path.join(seed_dir, "best.pt"))
    mine = runs.read_result(os.path.join(seed_dir, "result.json"))
    with open(FULL_RUN) as f:
        full = json.load(f)
    print(f"The course model: {mine['epochs']} epochs (best valid epoch {mine['best_epoch']}), "
          f"test MAE {mine['test']['mae']:.3f} (MAE: the mean |prediction - label|, in label units; notebook 06).\n"
          f"Short-trained, so that the notebooks stay quick: the README's full run (python train.py --dataset "
          f"synthetic: up to {full['config']['train']['epochs']} epochs, early stopping; {len(full['seeds'])} seeds) "
          f"reaches test MAE {full['test_mean']['mae']:.3f} ± {full['test_std']['mae']:.3f}.")
    return model, datasets, ckpt


# ----------------------------------------------------------------------------
# Notebook 00's picture of the whole model: boxes, arrows and the abstract's claims as badges.
CLAIM_COLOR = "0.25"        # the claims' badges: numbered, one neutral colour (hues mean modalities)
CLAIMS = {1: "three feature sequences: language, audio, vision",
          2: "feature interaction: four tokens z_t, z_a, z_v, z_g",
          3: "alignment by contrastive learning; normalisation",
          4: "modalities contribute differently: weights α",
          5: "robust to the text model: any text width d_t"}


def draw_model():
    """The whole model, data at the top, the loss at the bottom; returns the figure."""
    FONT = 9                       # every label; the picture is drawn in units of 0.1 inch
    W, H = 96, 112
    fig = plt.figure(figsize=(W / 10, H / 10))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set(xlim=(0, W), ylim=(0, H))
    ax.axis("off")

    def badge(x, y, n):
        ax.add_patch(Circle((x, y), 1.4, fc=CLAIM_COLOR, ec="none", zorder=5))
        ax.text(x, y, str(n), ha="center", va="center", color="white", fontsize=FONT, weight="bold", zorder=6)

    def box(x, y, w, h, text="", face="#f4f4f4", added=False, badges=(), title=False):
        """Rounded box, text centred; the abstract's claims as badges inside its top-left corner;
        a dashed outline marks what this project added."""
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=1.2", fc=face,
                                    ec="0.25", lw=1.0, ls=(0, (4, 2)) if added else "-"))
        for i, n in enumerate(badges):
            badge(x + 2.3 + 3.3 * i, y + h - 2.3, n)
        if text:
            ax.text(x + w / 2, y + h - 2.3 if title else y + h / 2, text, ha="center", va="center",
                    fontsize=FONT + (1 if title else 0), weight="bold" if title else "normal", linespacing=1.35)

    def arrow(x0, y0, x1, y1):
        ax.annotate("", (x1, y1), (x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.0, shrinkA=0, shrinkB=0))

    left, cw, gap = 3, 28, 3                       # modality columns: left edge, width, gap
    col = {m: left + i * (cw + gap) for i, m in enumerate(("text", "audio", "vision"))}
    mid = {m: x + cw / 2 for m, x in col.items()}
    full = 3 * cw + 2 * gap

    y = H - 10
    box(left, y, full, 8, "data.py: non-finite values → 0;  all-zero audio/vision frames masked as missing (added);\n"
        "each feature centred and scaled with statistics of the train split's real frames", face="#fff4d6", badges=(3,))
    rows = [  # (height, text per modality, face, added, badges per modality)
        (10, {m: f"{m}\nX_{m[0]}  (b, l_{m[0]}, d_{m[0]})\n{m}_mask  (b, l_{m[0]})" for m in col}, "#dbe9f6", False,
         {"text": (1, 5), "audio": (1,), "vision": (1,)}),
        (10, {"text": "text dropout  (text_drop)\ntraining only\n(b, l_t, d_t)",
              "audio": "with_deviations\nframe | frame − mean\n(b, l_a, 2·d_a)",
              "vision": "with_deviations\nframe | frame − mean\n(b, l_v, 2·d_v)"}, "#f4f4f4", True, {}),
        (10, {m: "Projection  (project[m])\nLayerNorm → Linear\n+ positions → (b, l, d)" for m in col},
         "#f4f4f4", False, {m: (3,) for m in col}),
        (10, {m: f"UnimodalEncoder  (encode[m])\nmasked self-attention\nH_{m[0]}  (b, l_{m[0]}, d)" for m in col},
         "#f4f4f4", False, {}),
    ]
    for h, texts, face, added, badges in rows:
        for m in col:
            arrow(mid[m], y, mid[m], y - 3)
        y -= 3 + h
        for m in col:
            box(col[m], y, cw, h, texts[m], face=face, added=added, badges=badges.get(m, ()))

    # the interaction: where each token's query starts, and which frames it reads
    for m in col:
        arrow(mid[m], y, mid[m], y - 3)
    y -= 3 + 27
    box(left, y, full, 27, "Interaction: four tokens  (interaction)", face="#efe6f7", badges=(2,), title=True)
    box(left + 3, y + 16.5, full - 6, 5,
        "query starts: StatisticsPooling (mean, spread, peak of H_m) → LayerNorm → Linear",
        face="white", added=True, badges=(3,))
    tokens = ["z_t\nstarts from text\nreads H_a, H_v", "z_a\nstarts from audio\nreads H_t, H_v",
              "z_v\nstarts from vision\nreads H_t, H_a", "z_g\nmean of the 3 starts\nreads H_t, H_a, H_v"]
    tw = (full - 6 - 3 * 2) / 4
    for i, text in enumerate(tokens):
        box(left + 3 + i * (tw + 2), y + 4.5, tw, 10, text, face="white")
    ax.text(left + full / 2, y + 2.3, "z = [z_t, z_a, z_v, z_g]  (b, 4, d)", ha="center", va="center", fontsize=FONT)

    # alignment, objective, fusion side by side: the objective takes L_con from the left and ŷ from the right
    bottom_h = 19
    y_b = y - 4 - bottom_h
    widths = {"align": 32, "objective": full - 64 - 6, "fusion": 32}
    xs = {"align": left, "objective": left + 32 + 3, "fusion": left + full - 32}
    box(xs["align"], y_b, widths["align"], bottom_h,
        "Alignment  (align_head)\none Linear + L2 normalisation\n"
        "→ p_t, p_a, p_v  (b, 3, d)\nInfoNCE over t–a, t–v, a–v,\ntemperature τ → L_con", face="#e3f3e3", badges=(3,))
    box(xs["fusion"], y_b, widths["fusion"], bottom_h,
        "Fusion  (fusion)\nLayerNorm each token\nα = softmax of a score  (b, 4)\n"
        "α·z side by side  (b, 4d)\nMLP → ŷ  (b,)", face="#fbe3e3", badges=(4, 3))
    box(xs["objective"], y_b, widths["objective"], bottom_h,
        "MIAR.objective\nL = L1(ŷ, y)\n+ λ · L_con\n\nreturns the loss;\nforward returns ŷ, α", face="#fff4d6")
    for part, label in (("align", "z_t, z_a, z_v"), ("fusion", "all four")):
        x_arrow = xs[part] + widths[part] / 2
        arrow(x_arrow, y, x_arrow, y_b + bottom_h)
        ax.text(x_arrow + 1, y - 2, label, fontsize=FONT, va="center")
    arrow(xs["align"] + widths["align"], y_b + bottom_h / 2, xs["objective"], y_b + bottom_h / 2)
    arrow(xs["fusion"], y_b + bottom_h / 2, xs["objective"] + widths["objective"], y_b + bottom_h / 2)

    # legend: the abstract's claims, and the dashed outline
    items = list(CLAIMS.items()) + [(None, "dashed outline: added by this project")]
    for i, (n, text) in enumerate(items):
        lx, ly = left + 1.5 + 46 * (i % 2), y_b - 4 - 3.2 * (i // 2)
        if n:
            badge(lx, ly, n)
        else:
            ax.add_patch(Rectangle((lx - 1.4, ly - 1.2), 2.8, 2.4, fc="none", ec="0.25", ls=(0, (2, 1))))
        ax.text(lx + 2.4, ly, text, va="center", fontsize=FONT)
    low = y_b - 4 - 3.2 * 2 - 2.5
    ax.set_ylim(low, H)
    fig.set_size_inches(W / 10, (H - low) / 10)
    return fig
