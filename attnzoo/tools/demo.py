"""The seed experiment (d2l "Attention Pooling by Similarity"): Nadaraya–Watson kernel regression.

Data ``y = 2 sin(x) + x^0.8 + eps``, ``eps ~ N(0, 0.5)``; 50 sorted training points on [0, 5),
50 test points. Three models, all attnzoo variants called through one interface:

* ``average``: average pooling (every prediction is the mean of the training targets);
* ``nadaraya_watson``: the non-parametric Gaussian-kernel estimator (w = 1);
* ``nadaraya_watson(learnable=True)``: the parametric one, w (from 1) trained as d2l does it
  (leave-one-out keys, SGD lr 0.5 on the summed squared error, 5 epochs).

Each model is read through its attention entropy (:func:`attnzoo.entropy`, nats, averaged over the test
queries): average pooling over 50 keys has ``log 50 = 3.91``; the information a model gains is the
drop from that, ``H_average - H_model``.

The models, their MSE and entropy need torch only; the PNGs (``run(plots=True)``, ``attnzoo demo``) are
drawn by :mod:`attnzoo.tools.plot` and need the ``viz`` extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

import attnzoo


def truth(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sin(x) + x**0.8


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor  # noise-free truth at x_test


def make_data(seed: int = 0, n_train: int = 50) -> Data:
    g = torch.Generator().manual_seed(seed)
    x_train, _ = torch.sort(torch.rand(n_train, generator=g) * 5)
    y_train = truth(x_train) + torch.normal(0.0, 0.5, (n_train,), generator=g)
    x_test = torch.arange(0, 5, 0.1)
    return Data(x_train, y_train, x_test, truth(x_test))


def _as_seq(x: torch.Tensor) -> torch.Tensor:  # (n,) -> (1, n, 1): one batch of n scalar points
    return x.view(1, -1, 1)


def predict(attn: attnzoo.Attention, data: Data, entropy: bool = False):
    """Predictions at the test points (n_test,) and the weights (n_test, n_train); with ``entropy``, also
    each test query's attention entropy (n_test,)."""
    res = attn(_as_seq(data.x_test), _as_seq(data.x_train), _as_seq(data.y_train), return_weights=True,
               return_entropy=entropy)
    out, w = res[0].view(-1), res[1].view(len(data.x_test), len(data.x_train))
    return (out, w, res[2].view(-1)) if entropy else (out, w)


def fit_leave_one_out(attn: attnzoo.Attention, data: Data, epochs: int = 5, lr: float = 0.5) -> list[float]:
    """d2l's training: every training point a query over all the others (the diagonal masked out),
    SGD on the summed squared error, full batch; returns the loss of each epoch."""
    n = len(data.x_train)
    x, y = _as_seq(data.x_train), _as_seq(data.y_train)
    leave_one_out = ~torch.eye(n, dtype=torch.bool)
    opt = torch.optim.SGD(attn.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        loss = ((attn(x, x, y, leave_one_out).view(n) - data.y_train) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def train_parametric(data: Data, epochs: int = 5, lr: float = 0.5, backend: str = "auto"):
    """The parametric estimator (w starts at 1, the non-parametric one) trained as d2l does;
    returns (model, per-epoch losses)."""
    attn = attnzoo.create("nadaraya_watson", learnable=True, backend=backend)
    return attn, fit_leave_one_out(attn, data, epochs, lr)


def run(seed: int = 0, out_dir: str | Path = "attnzoo-out", backend: str = "auto", plots: bool = True) -> dict:
    """Fit the three models; returns {model: {"mse": ..., "pred": ..., "weights": ...}}.

    ``plots``: also write ``demo_fit.png`` and ``demo_weights.png`` under ``out_dir`` (listed in
    ``results["files"]``; needs the ``viz`` extra)."""
    data = make_data(seed)
    parametric, losses = train_parametric(data, backend=backend)
    models = {
        "average": attnzoo.create("average", backend=backend),
        "nadaraya_watson": attnzoo.create("nadaraya_watson", backend=backend),
        "nadaraya_watson(learnable)": parametric,
    }
    results = {}
    with torch.no_grad():
        for name, attn in models.items():
            pred, w, ent = predict(attn, data, entropy=True)
            results[name] = {"mse": float(((pred - data.y_test) ** 2).mean()), "pred": pred, "weights": w,
                             "entropy": float(ent.mean())}
    for r in results.values():
        r["information_gain"] = results["average"]["entropy"] - r["entropy"]
    results["nadaraya_watson(learnable)"]["w"] = float(parametric.score.w.detach())
    results["nadaraya_watson(learnable)"]["train_losses"] = losses
    if plots:
        results["files"] = _plot(data, results, Path(out_dir))
    return results


def _plot(data: Data, results: dict, out: Path) -> list[Path]:
    from . import plot  # the viz extra: MissingExtraError without matplotlib

    names = [n for n in results if n != "files"]
    curves = out / "demo_fit.png"
    plot.plot_fit(data.x_test, data.y_test, {n: results[n]["pred"] for n in names},
                  points=(data.x_train, data.y_train), xlim=(0, 5), ylim=(-1, 5), path=curves)
    heat = out / "demo_weights.png"
    mats = torch.stack([results[n]["weights"] for n in names]).unsqueeze(0)
    titles = [n.replace("(", "\n(") for n in names]
    plot.show_heatmaps(mats, xlabel="training inputs (sorted)", ylabel="test inputs", titles=titles,
                       figsize=(9, 3.4), path=heat)
    return [curves, heat]


def format_table(results: dict) -> str:
    rows = [(n, r) for n, r in results.items() if n != "files"]
    width = max(len(n) for n, _ in rows)
    lines = [f"{'model':<{width}}  test MSE  entropy  information gain",
             f"{'-' * width}  --------  -------  ----------------"]
    lines += [f"{n:<{width}}  {r['mse']:8.4f}  {r['entropy']:7.3f}  {r['information_gain']:16.3f}" for n, r in rows]
    w = results["nadaraya_watson(learnable)"]["w"]
    n = len(results["average"]["weights"][0])
    lines.append(f"(learned w = {w:.3f}; the kernel width is 1/w = {1 / w if w else math.inf:.3f})")
    lines.append(f"(entropy: -sum_j w_ij log w_ij in nats, mean over the test queries; uniform over {n} keys: "
                 f"log {n} = {math.log(n):.3f}; information gain: the drop from average pooling's)")
    return "\n".join(lines)
