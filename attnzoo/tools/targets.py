"""Performance targets measured side by side in one run (pytest-benchmark), shared by the benchmark files.

A :class:`Board` holds a file's targets ``(label, numerator, denominator, bound)``: ``numerator / denominator
<= bound``. :meth:`Board.run` times a side (best of a few rounds) and records it; a target is checked in the
test that measures its second side, and a miss fails that test saying by how much ("additive fused / d2l eager
N=1024: 0.061 > 0.050 (22% over)"). Under ``--benchmark-disable`` (CI) every side runs once as a smoke test and
nothing is timed or checked. :meth:`Board.report_lines` is the run's report.
"""

from __future__ import annotations

import math

import pytest


def timing_enabled(config) -> bool:
    """False under --benchmark-disable (or when pytest-benchmark disabled itself, e.g. under xdist)."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        return not session.disabled
    return not config.getoption("benchmark_disable", False) or config.getoption("benchmark_enable", False)


def check_target(label: str, num: float, den: float, bound: float) -> str | None:
    """None when num / den <= bound (the target is met), else what missed and by how much, e.g.
    "additive fused / d2l eager: 0.061 > 0.050 (22% over)"."""
    ratio = num / den if den else math.inf
    if ratio <= bound:
        return None
    return f"{label}: {ratio:.3f} > {bound:.3f} ({_over(ratio, bound)} over)"


def _over(ratio: float, bound: float) -> str:
    over = 100 * (ratio / bound - 1)
    return f"{over:.0f}%" if over >= 10 else f"{over:.1f}%"


class Board:
    """One file's targets, informational ratios ``(label, numerator, denominator)`` and this run's times."""

    def __init__(self, targets, info=(), more: str = ""):
        self.targets, self.info, self.more = list(targets), list(info), more
        self.results: dict[str, float] = {}  # name -> best time (s) of this run; only timed runs are recorded
        self.failed_in: dict[str, str] = {}  # target label -> the test that measured its second side and failed

    def record(self, name: str, seconds: float, where: str) -> None:
        """Stores a measured time and checks every target it completes (both sides measured): a missed target
        fails the calling test (``where``), with the ratio, the bound and both times."""
        self.results[name] = seconds
        missed = []
        for label, num, den, bound in self.targets:
            if name in (num, den) and num in self.results and den in self.results:
                msg = check_target(label, self.results[num], self.results[den], bound)
                if msg:
                    self.failed_in[label] = where
                    missed.append(f"{msg} [{num} {self.results[num] * 1e3:.3f} ms / {den} "
                                  f"{self.results[den] * 1e3:.3f} ms]")
        if missed:
            pytest.fail("CPU target missed: " + "; ".join(missed), pytrace=False)

    def run(self, benchmark, name, fn, rounds=5, warmup=1, iterations=1):
        """Times fn (best of ``rounds``, each ``iterations`` calls); under --benchmark-disable it runs fn once and
        records nothing."""
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=warmup)
        if benchmark.stats is not None:
            self.record(name, benchmark.stats.stats.min, benchmark.fullname)

    def report_lines(self, timed: bool) -> list[str]:
        """The report of one run: each target's ratio against its bound (met / MISSED by how much), or why it
        was not measured, then the informational ratios."""
        lines, unmeasured = [], False
        for label, num, den, bound in self.targets:
            if not timed:
                lines.append(f"{label:48s} not measured (benchmarks disabled)")
                continue
            missing = [name for name in (num, den) if name not in self.results]
            if missing:
                unmeasured = True
                lines.append(f"{label:48s} not measured in this run (no {', '.join(missing)})")
                continue
            ratio = self.results[num] / self.results[den]
            if check_target(label, self.results[num], self.results[den], bound) is None:
                verdict = "met"
            else:
                verdict = f"MISSED ({_over(ratio, bound)} over)"
                if label in self.failed_in:
                    verdict += f", failed {self.failed_in[label]}"
            lines.append(f"{label:48s} {ratio:8.3f}  (target <= {bound:.3f})  {verdict}")
        for label, num, den in self.info:
            if num in self.results and den in self.results:
                ratio = self.results[num] / self.results[den]
                lines.append(f"{label:48s} {ratio:8.3f}  (1/ratio = {1 / ratio:.1f}x)")
        if unmeasured and self.more:
            lines.append(self.more)
        return lines
