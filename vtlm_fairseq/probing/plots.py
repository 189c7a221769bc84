"""PNG plots of the probe suite (matplotlib, no display needed)."""

from pathlib import Path
from typing import List

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .suite import summarise_seeds  # noqa: E402

COLOURS = {"aligned": "#2b6cb0", "shuffled": "#dd6b20", "reversed": "#805ad5"}


def _bars(ax, groups: List[str], series: dict, ylabel: str, title: str):
    """Grouped bars: series name -> list of (mean, std) per group."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        means = [v[0] if v else np.nan for v in values]
        stds = [v[1] if v else 0.0 for v in values]
        colour = next((c for k, c in COLOURS.items() if name.endswith(k)), None)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=name,
               color=colour, alpha=0.9 if colour else None, edgecolor="black", linewidth=0.4)  # fmt: skip
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _one_run_series(rows: List[dict], series_key: str, group_key: str, groups: List[str], metric: str) -> dict:
    """series -> (value, no spread) per group, for probes run once per setting."""
    names = dict.fromkeys(r[series_key] for r in rows)
    return {name: [next(((r[metric], 0.0) for r in rows if r[series_key] == name and r[group_key] == g), None)
                   for g in groups] for name in names}  # fmt: skip


def plot_masked_words(rows: List[dict], probe: str, path: Path) -> Path:
    """Accuracy per masked condition, correct vs shuffled images, one panel per model."""
    chosen = [r for r in rows if r.get("probe") == probe]
    models = list(dict.fromkeys(r["model"] for r in chosen))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in chosen if r["model"] == model]
        groups, series = [], {}
        conditions = list(dict.fromkeys(r["masked"] for r in mine))
        for condition in conditions:
            for lang in ("en", "de"):
                if any(f"{lang}_acc" in r for r in mine if r["masked"] == condition):
                    groups.append(f"{condition}\n({lang})")
        for order in dict.fromkeys(r["images"] for r in mine):
            values = []
            for condition in conditions:
                for lang in ("en", "de"):
                    if not any(f"{lang}_acc" in r for r in mine if r["masked"] == condition):
                        continue
                    s = summarise_seeds([r for r in mine if r["masked"] == condition and r["images"] == order],
                                        ("images",), f"{lang}_acc")  # fmt: skip
                    values.append((s[0]["mean"], s[0]["std"]) if s else None)
            series[order] = values
        _bars(ax, groups, series, "accuracy (%)", f"{model}: masked {probe.replace('_', ' ')}")
    return _save(fig, path)


def plot_entity_masking(rows: List[dict], path: Path) -> Path:
    """BLEU and entity recall per source masking mode, NMT vs MMT."""
    def system(r):  # an MMT's other image conditions are series of their own
        images = r.get("images", "aligned")
        return r["model"] if r["kind"] != "MMT" or images == "aligned" else f"{r['model']}, {images} images"

    chosen = [dict(r, system=system(r)) for r in rows if r.get("probe") == "entity_masking"]
    modes = list(dict.fromkeys(r["mode"] for r in chosen))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, label in ((axes[0], "bleu_tok_lc", "BLEU (tok, lc)"), (axes[1], "entity_recall", "entity recall (%)")):
        _bars(ax, modes, _one_run_series(chosen, "system", "mode", modes, metric), label, f"{label} by source masking")
    return _save(fig, path)


def plot_incongruent(rows: List[dict], path: Path) -> Path:
    chosen = [r for r in rows if r.get("probe") == "incongruent"]
    models = list(dict.fromkeys(r["model"] for r in chosen))
    metrics = [("bleu_tok_lc", "BLEU (tok, lc)")] + ([("ambiguous_acc", "ambiguous-word accuracy (%)")]
                                                      if any("ambiguous_acc" in r for r in chosen) else [])  # fmt: skip
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), squeeze=False)
    for ax, (metric, label) in zip(axes[0], metrics):
        series = _one_run_series(chosen, "images", "model", models, metric)
        _bars(ax, models, series, label, f"{label.split(' (')[0]} by image order")
    return _save(fig, path)


def plot_suite(rows: List[dict], out_dir: Path) -> List[Path]:
    out_dir = Path(out_dir)
    written = []
    for probe in ("last_word", "ambiguous_words"):
        if any(r.get("probe") == probe for r in rows):
            written.append(plot_masked_words(rows, probe, out_dir / f"{probe}.png"))
    if any(r.get("probe") == "entity_masking" for r in rows):
        written.append(plot_entity_masking(rows, out_dir / "entity_masking.png"))
    if any(r.get("probe") == "incongruent" for r in rows):
        written.append(plot_incongruent(rows, out_dir / "incongruent.png"))
    return written
