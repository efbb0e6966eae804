"""The command line: `attnzoo list` and the seed experiment `attnzoo demo`."""

import subprocess
import sys

import pytest
import torch

from attnzoo.cli import main
from attnzoo.tools import demo


def test_list_prints_every_variant(capsys, fresh_registry):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("additive", "nadaraya_watson", "multihead", "local"):
        assert f"\n{name} " in out
    assert "fused ops:" in out


def test_list_reports_broken_plugins(capsys, installed):
    installed("tp-bad", {"tp_bad": "tp_bad_missing_module"})
    with pytest.warns(Warning):
        assert main(["list", "--strict"]) == 1
    assert "plugin 'tp_bad' failed to import: ModuleNotFoundError" in capsys.readouterr().err


def test_demo_reproduces_d2l(tmp_path, capsys):
    assert main(["demo", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nadaraya_watson(learnable)" in out and "test MSE" in out
    for name in ("demo_fit.png", "demo_weights.png"):
        assert (tmp_path / name).stat().st_size > 1000
    a, b = demo.run(seed=3, plots=False), demo.run(seed=3, plots=False)
    assert a["nadaraya_watson"]["mse"] == b["nadaraya_watson"]["mse"]
    # kernel regression beats the average; training lowers the leave-one-out loss
    assert a["nadaraya_watson"]["mse"] < a["average"]["mse"]
    losses = a["nadaraya_watson(learnable)"]["train_losses"]
    assert losses[-1] < losses[0]


class D2lNWKernelRegression(torch.nn.Module):
    """d2l's parametric Nadaraya-Watson model, as the book writes it (w starting at 1, as in the demo)."""

    def __init__(self, dtype):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, dtype=dtype))

    def forward(self, queries, keys, values):
        queries = queries.repeat_interleave(keys.shape[1]).reshape((-1, keys.shape[1]))
        self.attention_weights = torch.nn.functional.softmax(-((queries - keys) * self.w) ** 2 / 2, dim=1)
        return torch.bmm(self.attention_weights.unsqueeze(1), values.unsqueeze(-1)).reshape(-1)


def d2l_training(data, dtype=torch.float32):
    """d2l's training loop and test prediction: (learned w, per-epoch summed losses, test MSE)."""
    x, y, x_test = data.x_train.to(dtype), data.y_train.to(dtype), data.x_test.to(dtype)
    n = len(x)
    others = ~torch.eye(n, dtype=torch.bool)
    keys, values = x.repeat((n, 1))[others].reshape((n, -1)), y.repeat((n, 1))[others].reshape((n, -1))
    net = D2lNWKernelRegression(dtype)
    trainer = torch.optim.SGD(net.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        trainer.zero_grad()
        loss = torch.nn.MSELoss(reduction="none")(net(x, keys, values), y)
        loss.sum().backward()
        trainer.step()
        losses.append(float(loss.sum().detach()))
    with torch.no_grad():
        pred = net(x_test, x.repeat((len(x_test), 1)), y.repeat((len(x_test), 1)))
    return float(net.w.detach()), losses, float(((pred - data.y_test.to(dtype)) ** 2).mean())


# float32 rounding, amplified a little by five SGD steps (seen: 3e-7 relative between the two codes)
F32 = 4e-6


def _assert_same_training(got: dict, w, losses, mse, rtol):
    assert got["w"] == pytest.approx(w, rel=rtol)
    assert got["train_losses"] == pytest.approx(losses, rel=rtol)
    assert got["mse"] == pytest.approx(mse, rel=rtol)


@pytest.mark.parametrize("seed", [0, 3])
def test_demo_matches_d2l(seed):
    w, losses, mse = d2l_training(demo.make_data(seed))
    _assert_same_training(demo.run(seed=seed, plots=False, backend="reference")["nadaraya_watson(learnable)"],
                          w, losses, mse, F32)
    w64, _, _ = d2l_training(demo.make_data(seed), torch.float64)
    assert w == pytest.approx(w64, rel=F32)  # and d2l's own float32 run is that close to float64


def test_demo_backends_agree_untrained():
    ref = demo.run(seed=1, plots=False, backend="reference")
    fused = demo.run(seed=1, plots=False, backend="fused")
    for name in ("average", "nadaraya_watson"):
        assert fused[name]["mse"] == pytest.approx(ref[name]["mse"], rel=F32)


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_backends_agree_after_training(seed):
    """The fused kernels square exact differences, as the reference does: the same training to 1e-5."""
    ref = demo.run(seed=seed, plots=False, backend="reference")["nadaraya_watson(learnable)"]
    fused = demo.run(seed=seed, plots=False, backend="fused")["nadaraya_watson(learnable)"]
    _assert_same_training(fused, ref["w"], ref["train_losses"], ref["mse"], 1e-5)
    w, losses, mse = d2l_training(demo.make_data(seed))
    _assert_same_training(fused, w, losses, mse, F32)


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "attnzoo", "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("attnzoo ")
