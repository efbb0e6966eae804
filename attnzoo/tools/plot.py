"""Figures: attention-weight heatmaps (d2l's ``show_heatmaps``), the demo's fitted curves, ``attnzoo bench``
curves, the positional-encoding table and a document's two levels of hierarchical attention weights. Needs the
``viz`` extra (matplotlib): importing this module without it raises :class:`attnzoo.tools.MissingExtraError`.

Figures are built as ``matplotlib.figure.Figure`` objects rendered with Agg: no window is ever
opened, no pyplot state is touched, and the caller's matplotlib backend is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from . import MissingExtraError

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as exc:
    raise MissingExtraError("attnzoo.tools.plot", "viz", ["matplotlib"]) from exc

_BACKEND_ORDER = {"reference": 0, "fused": 1}


def _figure(figsize) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> None:
    if path is not None:
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")


def _as_grid(matrices) -> list[list]:
    """``(rows, cols, Nq, Nk)`` tensor/array or nested lists -> rows of 2-D float arrays."""
    import numpy as np

    def arr(m):
        if hasattr(m, "detach"):
            m = m.detach().float().cpu().numpy()
        a = np.asarray(m, dtype=float)
        if a.ndim != 2:
            raise ValueError(f"matrices: each matrix must be 2-D (Nq, Nk), got shape {a.shape}")
        return a

    if hasattr(matrices, "detach") or hasattr(matrices, "ndim"):
        if matrices.ndim != 4:
            raise ValueError(f"matrices: expected shape (rows, cols, Nq, Nk), got {tuple(matrices.shape)}")
        return [[arr(m) for m in row] for row in matrices]
    rows = [[arr(m) for m in row] for row in matrices]
    if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("matrices: expected a non-empty rows x cols grid")
    return rows


def show_heatmaps(matrices, xlabel: str, ylabel: str, titles: Sequence[str] | None = None,
                  figsize: tuple[float, float] | None = None, cmap: str = "Reds", path=None) -> Figure:
    """Attention weights as a grid of heatmaps with one shared colour bar (d2l's ``show_heatmaps``).

    ``matrices``: ``(rows, cols, Nq, Nk)`` (tensor, array or nested lists), e.g.
    ``weights.reshape(1, 1, Nq, Nk)`` or ``weights[None]`` for multi-head ``(H, Nq, Nk)``.
    ``titles``: one per column. All panels share one colour scale. ``figsize``: the whole figure,
    as in d2l (default: about 2.5 x 2.5 inches per panel). ``path``: also save there.
    Returns the figure (``rows * cols`` heatmap axes plus one colour-bar axes).
    """
    grid = _as_grid(matrices)
    n_rows, n_cols = len(grid), len(grid[0])
    if titles is not None and len(titles) != n_cols:
        raise ValueError(f"titles: expected {n_cols} (one per column), got {len(titles)}")
    vmin = min(float(m.min()) for row in grid for m in row)
    vmax = max(float(m.max()) for row in grid for m in row)
    if vmin == vmax:
        vmax = vmin + 1e-12
    fig = _figure(figsize or (2.5 * n_cols + 1.0, 2.5 * n_rows))
    axes = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)
    pcm = None
    for i, (row_axes, row) in enumerate(zip(axes, grid, strict=True)):
        for j, (ax, m) in enumerate(zip(row_axes, row, strict=True)):
            pcm = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
            if i == n_rows - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            if titles is not None:
                ax.set_title(titles[j])
    fig.colorbar(pcm, ax=axes, shrink=0.6)
    _save(fig, path)
    return fig


def plot_fit(x, y, curves: Mapping[str, object], points: tuple | None = None, path=None,
             figsize: tuple[float, float] = (6.0, 4.0), xlim=None, ylim=None) -> Figure:
    """A regression fit: the truth ``y(x)`` as a solid black line, each of ``curves`` (label -> values at
    ``x``) dashed, and the training ``points`` ``(x_train, y_train)`` as dots. Returns the figure (one
    axes); ``path``: also save there."""
    fig = _figure(figsize)
    ax = fig.subplots()
    ax.plot(_values(x), _values(y), "k-", label="truth")
    for label, values in curves.items():
        ax.plot(_values(x), _values(values), "--", label=label)
    if points is not None:
        ax.plot(_values(points[0]), _values(points[1]), "o", alpha=0.5, label="training points")
    ax.set(xlabel="x", ylabel="y")
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _values(t):
    """A tensor (any device or grad state), array or list as something matplotlib plots."""
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else t


def _get(r, key):
    return r[key] if isinstance(r, Mapping) else getattr(r, key)


def plot_bench(results, path=None, figsize: tuple[float, float] = (11.0, 4.2)) -> Figure:
    """Time (median ms) and peak memory (MiB) against N, log-log, one line per variant x backend x direction.

    ``results``: :class:`attnzoo.tools.bench.Result` objects or their ``as_dict()``; skipped or
    failed cases are left out. Dotted grey guides of slope 1 and 2 show linear vs quadratic growth.
    Returns the figure (two axes); ``path``: also save there (PNG by extension).
    """
    lines: dict[tuple[str, str, str], list[tuple[int, float | None, float | None]]] = {}
    for r in results:
        if _get(r, "status") != "ok":
            continue
        key = (_get(r, "variant"), _get(r, "backend"), _get(r, "direction"))
        mib = _get(r, "peak_bytes")
        lines.setdefault(key, []).append((_get(r, "n"), _get(r, "median_ms"), None if mib is None else mib / 2**20))
    fig = _figure(figsize)
    ax_t, ax_m = fig.subplots(1, 2)
    # colour = variant, line style and marker = backend (and direction)
    variants = sorted({k[0] for k in lines})
    kinds = sorted({k[1:] for k in lines}, key=lambda k: (_BACKEND_ORDER.get(k[0], 9), k))
    styles = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "v"), ((0, (5, 1, 1, 1)), "D"), ((0, (1, 3)), "x")]
    for key in sorted(lines, key=lambda k: (variants.index(k[0]), kinds.index(k[1:]))):
        pts = sorted(lines[key])
        ls, marker = styles[kinds.index(key[1:]) % len(styles)]
        label = f"{key[0]} / {key[1]}" + ("" if key[2] == "fwd" else f" ({key[2]})")
        for ax, k in ((ax_t, 1), (ax_m, 2)):
            xy = [(p[0], p[k]) for p in pts if p[k] is not None and p[k] > 0]
            if xy:
                ax.plot(*zip(*xy, strict=True), marker=marker, ms=4, color=f"C{variants.index(key[0]) % 10}", ls=ls,
                        label=label)
    for ax, title, unit in ((ax_t, "time per call", "median ms"), (ax_m, "peak memory", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (queries = keys)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        _guides(ax)
    handles, labels = ax_t.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _guides(ax) -> None:
    """Dotted lines of slope 1 (O(N)) and 2 (O(N^2)) through the lower-left corner of the data."""
    xs, ys = [], []
    for line in ax.get_lines():
        xs += list(line.get_xdata())
        ys += list(line.get_ydata())
    if len(set(xs)) < 2:
        return
    x0, x1, y0 = min(xs), max(xs), min(ys)
    for slope, name in ((1, "O(N)"), (2, "O(N²)")):
        y1 = y0 * (x1 / x0) ** slope
        ax.plot([x0, x1], [y0, y1], ls=":", color="0.6", lw=1)
        ax.annotate(name, (x1, y1), fontsize="x-small", color="0.4", ha="right", va="bottom")
    ax.set_ylim(y0 / 1.5, max(ys) * 1.5 if max(ys) > 0 else 1)


def positional_table(table=32, max_len: int = 60, *, figsize: tuple[float, float] = (3.5, 4.0), cmap: str = "Blues",
                     path=None) -> Figure:
    """A positional-encoding table as d2l draws it: positions as rows, encoding dimensions as columns.

    ``table``: a ``(max_len, d)`` tensor or array, a :class:`attnzoo.nn.PositionalEncoding` (its ``P``, learned
    or not), or an int ``d``: the sinusoidal table :func:`attnzoo.nn.sinusoidal_table` ``(max_len, d)`` (d2l's
    picture: ``d = 32``, 60 positions). Returns the figure (a heatmap axes and a colour bar); ``path``: also
    save there.
    """
    import numpy as np

    table = getattr(table, "P", table)
    if isinstance(table, int) and not isinstance(table, bool):
        import torch

        from ..nn import sinusoidal_table

        table = sinusoidal_table(max_len, table, dtype=torch.float64)
    P = np.asarray(_values(table), dtype=float)
    if P.ndim != 2:
        raise ValueError(f"table: expected a (max_len, d) table or an int d, got shape {P.shape}")
    return show_heatmaps(P[None, None], xlabel="Column (encoding dimension)", ylabel="Row (position)",
                         figsize=figsize, cmap=cmap, path=path)


def hierarchy_weights(word_weights, sentence_weights, tokens: Sequence[Sequence[str]] | None = None,
                      word_lens=None, *, title: str | None = None, figsize: tuple[float, float] | None = None,
                      cmap: str = "Reds", path=None) -> Figure:
    """One document's two levels of hierarchical attention weights: a heatmap of the word weights, one row per
    sentence ``(S, T)``, and beside it the sentence weights ``(S,)`` as horizontal bars on the same rows.

    ``tokens``: optional words per sentence, written in their cells; ``word_lens``: ``(S,)`` lengths, the
    padding beyond them left blank (default: the lengths of ``tokens``, else none). Weights come as tensors
    (e.g. ``weights[0][b]``, ``weights[1][b]`` of :class:`attnzoo.nn.HierarchicalAttention` for document
    ``b``), arrays or lists. Returns the figure (heatmap, bars, colour bar); ``path``: also save there.
    """
    import numpy as np

    W = np.asarray(_values(word_weights), dtype=float)
    s = np.asarray(_values(sentence_weights), dtype=float)
    if W.ndim != 2:
        raise ValueError(f"word_weights: expected shape (S, T) (one row per sentence), got {W.shape}")
    if s.shape != (W.shape[0],):
        raise ValueError(f"sentence_weights: expected shape ({W.shape[0]},) (one per row of word_weights), "
                         f"got {s.shape}")
    n_sent, n_words = W.shape
    if tokens is not None and (len(tokens) != n_sent or any(len(t) > n_words for t in tokens)):
        raise ValueError(f"tokens: expected {n_sent} sentences of at most {n_words} words, "
                         f"got {[len(t) for t in tokens]} words")
    if word_lens is None and tokens is not None:
        word_lens = [len(t) for t in tokens]
    if word_lens is not None:
        lens = np.asarray(_values(word_lens)).astype(int)
        if lens.shape != (n_sent,):
            raise ValueError(f"word_lens: expected shape ({n_sent},) (one length per sentence), got {lens.shape}")
        W = np.ma.masked_where(np.arange(n_words)[None, :] >= lens[:, None], W)
    fig = _figure(figsize or (0.45 * n_words + 3.5, 0.45 * n_sent + 1.6))
    ax, ax_s = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [max(n_words, 1), 3], "wspace": 0.05})
    vmax = max(float(np.ma.max(W)) if np.ma.count(W) else 0.0, 1e-12)
    im = ax.imshow(W, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_facecolor("0.92")  # padding: masked, drawn in grey
    for i, sent in enumerate(tokens or ()):
        for j, tok in enumerate(sent):
            ax.text(j, i, tok, ha="center", va="center", fontsize=8, color="white" if W[i, j] > 0.6 * vmax else "k")
    ax.set(xlabel="word", ylabel="sentence", title="word weights (per sentence)")
    ax.set_xticks(range(n_words))
    ax.set_yticks(range(n_sent))
    ax_s.barh(range(n_sent), s, color="C0")
    for i, v in enumerate(s):
        ax_s.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax_s.set_xlim(0, max(1.0, float(s.max()) * 1.35))
    ax_s.set(xlabel="weight", title="sentence weights")
    ax_s.tick_params(left=False)
    fig.colorbar(im, ax=[ax, ax_s], shrink=0.8, pad=0.02, label="word weight")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


__all__ = ["hierarchy_weights", "plot_bench", "plot_fit", "positional_table", "show_heatmaps"]
