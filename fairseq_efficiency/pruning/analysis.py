"""``--analyze``: the paper's Figure 4 (per-class damage) and Figure 8 (weight maps).

* Figure 4 (section 4.1): for each scheme, the masks it would use at ratio
  ``x`` are computed over the whole model, then applied to *one class at a time*;
  the perplexity increase on the validation set measures how much that class's
  share of the pruning hurts.
* Figure 8 (section 4.5): for each LSTM layer the matrix ``T = [W_ih | W_hh]``
  (rows: gates i, f, ĥ, o in torch's order i, f, g, o; columns: feed-forward
  then recurrent input) and each embedding matrix (one column per word, most
  frequent first), white where a weight survives class-blind pruning at the
  map ratio, black where it is pruned. A table gives the surviving fraction
  per gate and input.
"""
import csv
import os
from collections import OrderedDict

import torch
from torch import nn

from fairseq_efficiency.evaluate import perplexity
from fairseq_efficiency.pruning.classes import class_tensors
from fairseq_efficiency.pruning.schemes import PAPER_SCHEMES, compute_masks

GATES = ("i", "f", "h_hat", "o")  # torch's row blocks i, f, g, o


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    return path


def class_breakdown(task, model, ratio, schemes=PAPER_SCHEMES, split="valid", include=(), exclude=(),
                    split_lstm=False):
    """Rows ``{class, weights, base_ppl, <scheme> pruned, <scheme> dppl}`` (Figure 4)."""
    tensors = class_tensors(model, include, exclude, split_lstm)
    base = perplexity(task, model, split)
    rows = OrderedDict((c, {"class": c, "weights": sum(t.numel() for t in ts.values()),
                            "base_ppl": base}) for c, ts in tensors.items())
    for scheme in schemes:
        masks = compute_masks(tensors, scheme, ratio).masks
        for c, ts in tensors.items():
            saved = {n: t.clone() for n, t in ts.items()}
            pruned = 0
            for n, t in ts.items():
                t.masked_fill_(~masks[n], 0)
                pruned += int((~masks[n]).sum())
            ppl = perplexity(task, model, split)
            for n, t in ts.items():
                t.copy_(saved[n])
            rows[c][f"{scheme} pruned"] = pruned / rows[c]["weights"]
            rows[c][f"{scheme} dppl"] = ppl - base
    return list(rows.values())


def lstm_matrices(model):
    """``[(label, T, n_ff_cols), ...]``: ``T = [W_ih | W_hh]`` of every LSTM layer/direction."""
    out = []
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.LSTM):
            for k in range(mod.num_layers):
                for sfx in ([""] + (["_reverse"] if mod.bidirectional else [])):
                    ih = f"{mname}.weight_ih_l{k}{sfx}"
                    hh = f"{mname}.weight_hh_l{k}{sfx}"
                    out.append((f"{mname}.l{k}{sfx}", ih, hh))
        elif isinstance(mod, nn.LSTMCell):
            out.append((mname, f"{mname}.weight_ih", f"{mname}.weight_hh"))
    return out


def survival_maps(model, ratio, scheme="class-blind", include=(), exclude=()):
    """``(maps, gate_rows)``: label -> keep map, and per gate/input surviving fractions."""
    masks = compute_masks(class_tensors(model, include, exclude), scheme, ratio).masks
    maps, gate_rows = OrderedDict(), []
    for label, ih, hh in lstm_matrices(model):
        if ih not in masks or hh not in masks:
            continue
        T = torch.cat([masks[ih], masks[hh]], dim=1)
        maps[label] = (T, masks[ih].shape[1])
        n = T.shape[0] // 4
        for g, gate in enumerate(GATES):
            for part, m in (("feed-forward", masks[ih]), ("recurrent", masks[hh])):
                blk = m[g * n:(g + 1) * n]
                gate_rows.append({"matrix": label, "gate": gate, "input": part,
                                  "kept": float(blk.float().mean())})
    for name, m in masks.items():
        mod = dict(model.named_modules())[name.rpartition(".")[0]]
        if isinstance(mod, nn.Embedding):
            maps[name.rpartition(".")[0]] = (m.t(), None)  # one column per word
    return maps, gate_rows


def write_analysis(out_dir, breakdown, maps, gate_rows, ratio, map_ratio):
    """CSV/markdown tables and PNG figures into ``out_dir``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    written.append(_write_csv(os.path.join(out_dir, "fig4_class_breakdown.csv"), breakdown))
    schemes = [k[:-5] for k in breakdown[0] if k.endswith(" dppl")]
    fig, ax = plt.subplots(figsize=(max(6, len(breakdown) * 0.9), 4))
    width = 0.8 / max(len(schemes), 1)
    for j, s in enumerate(schemes):
        ax.bar([i + j * width for i in range(len(breakdown))], [r[f"{s} dppl"] for r in breakdown],
               width, label=s)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(breakdown))])
    ax.set_xticklabels([r["class"] for r in breakdown], rotation=45, ha="right")
    ax.set_ylabel("perplexity increase")
    ax.set_title(f"Pruning each class alone, {ratio:.0%} overall (See et al. 2016, Fig. 4)")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "fig4_class_breakdown.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    for label, (m, n_ff) in maps.items():
        h, w_ = m.shape
        fig, ax = plt.subplots(figsize=(max(5, min(12, 2 + w_ / 40)), max(3, min(10, 1.5 + h / 40))))
        ax.imshow(m.float().cpu().numpy(), cmap="gray", vmin=0, vmax=1, aspect="auto",
                  interpolation="nearest")
        if n_ff is not None:  # LSTM: gate rows, feed-forward | recurrent columns
            ax.axvline(n_ff - 0.5, color="red", lw=1)
            n = h // 4
            for g in range(1, 4):
                ax.axhline(g * n - 0.5, color="red", lw=0.5)
            ax.set_yticks([g * n + n / 2 for g in range(4)])
            ax.set_yticklabels(GATES)
            ax.set_xlabel("feed-forward input | recurrent input")
        else:
            ax.set_xlabel("word (most frequent first)")
            ax.set_ylabel("embedding dim")
        ax.set_title(f"{label}: white = kept at {map_ratio:.0%} class-blind (Fig. 8)", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"fig8_{label.replace('.', '_')}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if gate_rows:
        written.append(_write_csv(os.path.join(out_dir, "fig8_gates.csv"), gate_rows))
    return written


def format_breakdown(rows) -> str:
    schemes = [k[:-5] for k in rows[0] if k.endswith(" dppl")]
    head = f"{'class':<18} {'weights':>9} " + " ".join(f"{s + ' %/Δppl':>26}" for s in schemes)
    lines = [f"base perplexity {rows[0]['base_ppl']:.3f}", head]
    for r in rows:
        cells = " ".join(f"{100 * r[f'{s} pruned']:>15.1f}% {r[f'{s} dppl']:>+9.3f}" for s in schemes)
        lines.append(f"{r['class']:<18} {r['weights']:>9d} {cells}")
    return "\n".join(lines)
