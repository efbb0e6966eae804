"""Every registered variant x backend x N x direction.

See ``benchmarks/conftest.py`` for the options and what is measured.
"""

from __future__ import annotations

import math
import time

import pytest

import attnzoo
from attnzoo.tools import bench as B


def _cases(config) -> list:
    opt = config.getoption
    variants = B.parse_list(opt("attnzoo_variants")) or attnzoo.list_variants()
    B.check_variants(variants)
    backends = B.parse_list(opt("attnzoo_backends"))
    directions = B.parse_list(opt("attnzoo_directions"))
    shape = {"batch": opt("attnzoo_batch"), "dim": opt("attnzoo_dim"), "device": opt("attnzoo_device")}
    if opt("attnzoo_sizes"):
        return [pytest.param(c, id=c.id)
                for c in B.cases(variants, backends, B.parse_sizes(opt("attnzoo_sizes")), directions, **shape)]
    params = []
    for preset, marks in (("default", ()), ("long", (pytest.mark.slow,))):
        sizes = [n for n in B.SIZE_PRESETS[preset] if preset == "default" or n not in B.SIZE_PRESETS["default"]]
        cases = B.cases(variants, backends, sizes, directions, **shape)
        params += [pytest.param(c, id=c.id, marks=marks) for c in cases]
    # variant x backend x direction, sizes ascending (the memory guard extrapolates from the smaller N)
    return sorted(params, key=lambda p: (p.values[0].variant, p.values[0].backend, p.values[0].backward,
                                         p.values[0].n))


def pytest_generate_tests(metafunc):
    if "attnzoo_case" in metafunc.fixturenames:
        metafunc.parametrize("attnzoo_case", _cases(metafunc.config))


def test_variant(benchmark, attnzoo_case, attnzoo_guard, request):
    """Time one case with ``benchmark.pedantic`` and record its peak memory in ``extra_info``."""
    case = attnzoo_case
    config = request.config
    benchmark.group = case.group
    benchmark.extra_info.update(variant=case.variant, backend=case.backend, n=case.n, direction=case.direction,
                                batch=case.batch, dim=case.dim, device=case.device)
    why = attnzoo_guard.check(case)
    if why:
        pytest.skip(why)
    try:
        fn, note = B.build(case)  # builds and runs one warm-up call
    except B.Unavailable as exc:
        pytest.skip(str(exc))
    benchmark.extra_info["backend_note"] = note
    t0 = time.perf_counter()
    fn()
    probe = time.perf_counter() - t0
    min_rounds = config.getoption("benchmark_min_rounds", 5) or 1
    rounds = max(min_rounds, min(1000, math.ceil(config.getoption("attnzoo_budget") / max(probe, 1e-9))))
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    if not config.getoption("attnzoo_no_memory"):
        peak, method = B.peak_memory(fn, case.device)
        attnzoo_guard.record(case, peak)
        benchmark.extra_info.update(peak_bytes=peak, peak_mib=None if peak is None else round(peak / B.MiB, 3),
                                    memory_method=method)
