"""One plot style and the plots that recur across chapters: loss curves, attention maps, embedding scatters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "legend.frameon": False,
}


def use_style() -> None:
    """Apply the book's plot style (call once at the top of a chapter)."""
    plt.rcParams.update(STYLE)


def _as_array(values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Moving average over ``window`` points (shorter at the start), for noisy per-step losses."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    array = _as_array(values)
    cumulative = np.cumsum(np.insert(array, 0, 0.0))
    counts = np.minimum(np.arange(1, len(array) + 1), window)
    return (cumulative[1:] - cumulative[np.maximum(0, np.arange(1, len(array) + 1) - window)]) / counts


def plot_losses(
    series: Mapping[str, Sequence[float] | tuple[Sequence[int], Sequence[float]]],
    baselines: Mapping[str, float] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str = "step",
    ylabel: str = "loss",
    smoothing: int = 1,
    log_y: bool = False,
) -> Axes:
    """Curves by name (values, or (steps, values) pairs), with horizontal dashed baselines by name."""
    if not series:
        raise ValueError("series is empty: pass at least one named curve")
    ax = ax or plt.subplots()[1]
    for name, curve in series.items():
        if isinstance(curve, tuple) and len(curve) == 2:
            steps, values = _as_array(curve[0]), _as_array(curve[1])
        else:
            values = _as_array(curve)
            steps = np.arange(1, len(values) + 1)
        if len(steps) != len(values):
            raise ValueError(f"series {name!r}: {len(steps)} steps but {len(values)} values")
        ax.plot(steps, smooth(values, smoothing) if smoothing > 1 else values, label=name)
    for index, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1, color=f"C{len(series) + index}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def attention_heatmap(
    attn_weights: object,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    colorbar: bool = True,
) -> Axes:
    """One attention matrix (queries down, keys across) as a heat map with token labels."""
    weights = _as_array(attn_weights)
    if weights.ndim != 2:
        raise ValueError(f"attn_weights must be 2-D (queries, keys), got shape {weights.shape}")
    if x_labels is not None and len(x_labels) != weights.shape[1]:
        raise ValueError(f"x_labels has {len(x_labels)} labels for {weights.shape[1]} keys")
    if y_labels is not None and len(y_labels) != weights.shape[0]:
        raise ValueError(f"y_labels has {len(y_labels)} labels for {weights.shape[0]} queries")
    ax = ax or plt.subplots()[1]
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, aspect="auto")
    ax.grid(False)
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=90, fontsize=8)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), y_labels, fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_grid(attn_weights: object, tokens: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Every (layer, head) map of a (layers, heads, L, L) tensor in one grid figure."""
    weights = _as_array(attn_weights)
    if weights.ndim != 4:
        raise ValueError(f"attn_weights must be (layers, heads, queries, keys), got shape {weights.shape}")
    n_layers, n_heads = weights.shape[:2]
    figure, axes = plt.subplots(n_layers, n_heads, figsize=(1.6 * n_heads, 1.6 * n_layers), squeeze=False)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def zero_shot_figure(
    images: object, prompts: Sequence[str], probabilities: object, titles: Sequence[str] | None = None
) -> Figure:
    """One row per image: the image, then a bar per prompt with its zero-shot probability.

    images: (N, 3, H, W) in [0, 1]; probabilities: (N, len(prompts)), rows summing to 1.
    """
    pictures, table = _as_array(images), _as_array(probabilities)
    if pictures.ndim != 4 or pictures.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got shape {pictures.shape}")
    if table.shape != (len(pictures), len(prompts)):
        raise ValueError(f"probabilities must be (N={len(pictures)}, prompts={len(prompts)}), got shape {table.shape}")
    if titles is not None and len(titles) != len(pictures):
        raise ValueError(f"titles has {len(titles)} entries for {len(pictures)} images")
    figure, axes = plt.subplots(len(pictures), 2, figsize=(8, 0.35 * len(prompts) * len(pictures) + 0.6),
                                gridspec_kw={"width_ratios": [1, 3]}, squeeze=False)  # fmt: skip
    for row, (picture, values) in enumerate(zip(pictures, table, strict=True)):
        image_ax, bar_ax = axes[row]
        image_ax.imshow(np.clip(picture.transpose(1, 2, 0), 0, 1))
        image_ax.set_axis_off()
        if titles is not None:
            image_ax.set_title(titles[row], fontsize=8)
        best = int(values.argmax())
        colours = ["C1" if index == best else "C0" for index in range(len(prompts))]
        bar_ax.barh(range(len(prompts)), values, color=colours)
        bar_ax.set_yticks(range(len(prompts)), prompts, fontsize=8)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.set_xlabel("probability", fontsize=8)
    figure.tight_layout()
    return figure
