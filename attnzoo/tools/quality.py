"""What each variant is good for, next to how fast it is: two small tasks with fixed seeds.

* :func:`regression`: d2l 11.2's Nadaraya–Watson regression. ``y = 2 sin x + x^0.8 + eps``
  (``eps ~ N(0, 0.5)``), 50 sorted training points on ``[0, 5)``, 50 test points
  ``0, 0.1, ..., 4.9``; each test point is a query over the training points as keys (x) and
  values (y). Reported: test MSE against the noise-free ``f`` and the mean attention entropy of the test
  queries (nats; uniform over the 50 keys: ``log 50 = 3.91``). Trained variants (the learnable
  Nadaraya–Watson) follow d2l: leave-one-out keys (a diagonal mask), summed squared error,
  SGD lr 0.5, 5 epochs (full batch).
* :func:`recall`: associative recall. A sequence holds ``pairs`` (key, value) tokens, each
  pair one position (key embedding + value embedding); the query is one of the keys and the
  target its value. Model: embed -> one attention layer built with ``attnzoo.create`` (query:
  the query key's embedding; keys = values: the pair embeddings) -> linear head. Trained with
  Adam on fresh random batches; reported: final training loss, accuracy on a fixed held-out
  set (chance ``1 / vocab``), the mean attention entropy on that set (one key holds the answer: a model
  that found it is near 0; uniform: ``log pairs``) and mean wall time per training step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

import attnzoo

from . import demo

# -- (a) Nadaraya–Watson regression -------------------------------------------------------------------------

#: (label, variant, options, trained): the variants whose score makes sense on scalar x
REGRESSION_VARIANTS: tuple[tuple[str, str, dict, bool], ...] = (
    ("average", "average", {}, False),
    ("nadaraya_watson", "nadaraya_watson", {}, False),
    ("nadaraya_watson learnable", "nadaraya_watson", {"learnable": True}, True),
    ("nadaraya_watson boxcar", "nadaraya_watson", {"kernel": "boxcar"}, False),
    ("hard (nearest neighbour)", "hard", {"score": "nadaraya_watson"}, False),
    ("local (window=2)", "local", {"window": 2}, False),
    ("dot", "dot", {}, False),
    ("scaled_dot", "scaled_dot", {}, False),
    ("cosine", "cosine", {}, False),
)


@dataclass
class QualityResult:
    """One variant on one task; ``metric``/``value`` is the headline number (lower is better for MSE)."""

    task: str
    label: str
    variant: str
    metric: str
    value: float
    loss: float | None = None
    accuracy: float | None = None
    ms_per_step: float | None = None
    entropy: float | None = None  # mean attention entropy (nats) of the evaluated queries
    status: str = "ok"
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def regression(variants: Iterable[tuple[str, str, dict, bool]] = REGRESSION_VARIANTS, seed: int = 0,
               epochs: int = 5, lr: float = 0.5) -> list[QualityResult]:
    """Test MSE of each ``(label, variant, options, trained)`` on the d2l regression (see module doc)."""
    data = demo.make_data(seed)
    results = []
    for label, name, options, trained in variants:
        torch.manual_seed(seed)
        try:
            info = attnzoo.variant_info(name)
            attn = attnzoo.create(name, **{**info.example_options(1, 1, 1), **options})
            train_loss = demo.fit_leave_one_out(attn, data, epochs, lr)[-1] if trained else None
            with torch.no_grad():
                y_hat, _, ent = demo.predict(attn, data, entropy=True)
            mse = float(((y_hat - data.y_test) ** 2).mean())
            results.append(QualityResult("regression", label, name, "test_mse", mse, loss=train_loss,
                                         entropy=float(ent.mean())))
        except Exception as exc:  # noqa: BLE001 - a variant that cannot take scalar inputs is reported, not fatal
            results.append(QualityResult("regression", label, name, "test_mse", math.nan, status="error",
                                         reason=f"{type(exc).__name__}: {exc}"))
    return results


# -- (b) associative recall ---------------------------------------------------------------------------------


class RecallModel(nn.Module):
    """Embed pairs and the query key -> ``attnzoo.create(variant)`` -> linear head over the value vocabulary."""

    def __init__(self, variant: str, vocab: int, dim: int, backend: str = "auto", **options):
        super().__init__()
        self.key_emb = nn.Embedding(vocab, dim)
        self.value_emb = nn.Embedding(vocab, dim)
        info = attnzoo.variant_info(variant)
        opts = {**info.example_options(dim, dim, dim), **options}
        names, var_kw = attnzoo.registry.accepted_options(info.factory)
        if backend != "auto" and ("backend" in names or var_kw):
            opts["backend"] = backend
        self.attn = attnzoo.create(variant, **opts)
        self.head = nn.Linear(self.attn.output_dim(dim), vocab)

    def forward(self, keys, values, query, return_entropy: bool = False):
        """Logits ``(B, vocab)``; with ``return_entropy`` also the attention entropy ``(B,)`` (multi-head: mean)."""
        pairs = self.key_emb(keys) + self.value_emb(values)  # (B, P, D)
        q = self.key_emb(query)[:, None]  # (B, 1, D)
        if not return_entropy:
            return self.head(self.attn(q, pairs, pairs)[:, 0])
        out, ent = self.attn(q, pairs, pairs, return_entropy=True)
        return self.head(out[:, 0]), ent.reshape(len(q), -1).mean(-1)


def recall_batch(batch: int, pairs: int, vocab: int, generator: torch.Generator):
    """``(keys, values, query, target)``: distinct keys per sequence, random values, one key asked."""
    keys = torch.rand(batch, vocab, generator=generator).argsort(-1)[:, :pairs]
    values = torch.randint(vocab, (batch, pairs), generator=generator)
    pick = torch.randint(pairs, (batch,), generator=generator)
    rows = torch.arange(batch)
    return keys, values, keys[rows, pick], values[rows, pick]


def recall(variants: Sequence[str] | None = None, steps: int = 200, batch: int = 64, pairs: int = 8,
           vocab: int = 16, dim: int = 32, lr: float = 1e-2, seed: int = 0, backend: str = "auto",
           progress=None) -> list[QualityResult]:
    """Train one tiny model per variant on associative recall (see module doc); same data for every variant.

    ``variants``: default every registered variant. ``progress``: optional callable run after each variant.
    """
    variants = list(variants) if variants is not None else attnzoo.list_variants()
    test = recall_batch(1024, pairs, vocab, torch.Generator().manual_seed(seed + 1))
    results = []
    for name in variants:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        try:
            model = RecallModel(name, vocab, dim, backend=backend)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            loss = torch.tensor(float("nan"))
            # one wall-clock span over the whole training loop, not torch.utils.benchmark: each step
            # draws a new batch and changes the model, so there is no statement to repeat and block
            t0 = time.perf_counter()
            for _ in range(steps):
                *x, y = recall_batch(batch, pairs, vocab, gen)
                loss = F.cross_entropy(model(*x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            ms = (time.perf_counter() - t0) * 1e3 / max(1, steps)
            with torch.no_grad():
                *x, y = test
                logits, ent = model(*x, return_entropy=True)
                acc = float((logits.argmax(-1) == y).float().mean())
            results.append(QualityResult("recall", name, name, "accuracy", acc, loss=loss.item(), accuracy=acc,
                                         ms_per_step=ms, entropy=float(ent.mean())))
        except Exception as exc:  # noqa: BLE001
            results.append(QualityResult("recall", name, name, "accuracy", math.nan, status="error",
                                         reason=f"{type(exc).__name__}: {exc}"))
        if progress is not None:
            progress()
    return results


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_quality(results: Sequence[QualityResult]) -> str:
    """Plain-text tables, one per task."""
    lines = []
    reg = [r for r in results if r.task == "regression"]
    if reg:
        lines += ["Nadaraya-Watson regression (d2l 11.2): test MSE vs f (lower is better), attention entropy (nats)",
                  f"{'variant':<28} {'test MSE':>9} {'train loss':>11} {'entropy':>8}"]
        for r in sorted(reg, key=lambda r: (math.isnan(r.value), r.value)):
            if r.status != "ok":
                lines.append(f"{r.label:<28} {'-':>9} {'':>11}  {r.reason}")
                continue
            tl = "" if r.loss is None else f"{r.loss:.3f}"
            lines.append(f"{r.label:<28} {r.value:9.4f} {tl:>11} {_fmt(r.entropy):>8}")
    rec = [r for r in results if r.task == "recall"]
    if rec:
        if lines:
            lines.append("")
        lines += ["Associative recall: held-out accuracy, final training loss, attention entropy (nats), time per "
                  "training step",
                  f"{'variant':<28} {'accuracy':>9} {'loss':>8} {'entropy':>8} {'ms/step':>8}"]
        for r in sorted(rec, key=lambda r: (-(r.value if not math.isnan(r.value) else -1), r.label)):
            if r.status != "ok":
                lines.append(f"{r.label:<28} {'-':>9} {'-':>8} {'-':>8}  {r.reason}")
                continue
            lines.append(f"{r.label:<28} {r.value:9.3f} {r.loss:8.3f} {_fmt(r.entropy):>8} {r.ms_per_step:8.2f}")
    return "\n".join(lines)
