"""The conformance suite over every registered variant, on every backend, with each built-in's
independent formula (``tests/formulas.py``) and a pinned list of the checks each one runs."""

import json
import os
from pathlib import Path

import pytest

import attnzoo
from attnzoo.testing import applicable_checks, make_case, parametrize_with_checks

from .formulas import reference_for

BUILTINS = attnzoo.list_variants()
EXTRA = [
    ("hard", {"score": "cosine"}),
    ("local", {"score": "additive", "query_dim": 8, "key_dim": 8, "hidden_dim": 4, "window": 1}),
    ("soft", {"score": "general", "query_dim": 8, "key_dim": 8, "causal": True}),
    ("hard", {"score": "concat", "query_dim": 8, "key_dim": 8}),
    ("nadaraya_watson", {"kernel": "epanechnikov", "w": 0.1}),
    ("nadaraya_watson", {"kernel": "boxcar", "w": 0.1}),
    ("nadaraya_watson", {"kernel": "constant"}),
    ("nadaraya_watson", {"learnable": True}),
    ("multihead", {"embed_dim": 8, "num_heads": 2, "kdim": 8, "vdim": 6, "score": "additive", "hidden_dim": 4,
                   "pooling": "hard"}),
    ("multihead", {"embed_dim": 8, "num_heads": 4, "kdim": 8, "vdim": 6, "window": 1}),
    ("soft", {"position": "alibi", "alibi_slope": 0.7}),
    ("hard", {"score": "dot", "position": "alibi"}),
    ("local", {"score": "additive", "query_dim": 8, "key_dim": 8, "hidden_dim": 4, "window": 2,
               "position": "alibi", "alibi_slope": 0.3}),
    ("multihead", {"embed_dim": 8, "num_heads": 4, "kdim": 8, "vdim": 6, "position": "alibi"}),
    ("sparsemax", {"score": "additive", "query_dim": 8, "key_dim": 8, "hidden_dim": 4, "causal": True}),
    ("entmax15", {"score": "cosine", "temperature": 0.2, "position": "alibi", "alibi_slope": 0.3}),
    ("multihead", {"embed_dim": 8, "num_heads": 2, "kdim": 8, "vdim": 6, "pooling": "entmax15"}),
]
SNAPSHOT = Path(__file__).with_name("conformance_checks.json")


SPARSE = ("sparsemax", "entmax15")  # no fused kernel: refused with backend="fused"


def _with(backend, items):
    """(name, options + backend, independent reference formula) for each built-in item."""
    out = []
    for item in items:
        name, options = (item, {}) if isinstance(item, str) else item
        if backend == "fused" and (name in SPARSE or options.get("pooling") in SPARSE):
            continue
        out.append((name, {**options, "backend": backend}, reference_for(name, options)))
    return out


# variants with one eager implementation (other backends are refused): sampled hard attention (in training
# mode) and local-p
REFERENCE_ONLY = [("local", {"predict_center": True, "query_dim": 8, "window": 2}),
                  ("local", {"predict_center": True, "query_dim": 8, "window": 1, "score": "additive", "key_dim": 8,
                             "hidden_dim": 4, "center_hidden": 3}),
                  ("hard", {"sample": True, "seed": 0}),
                  ("hard", {"sample": True, "estimator": "reinforce", "seed": 1}),
                  ("hard", {"score": "additive", "query_dim": 8, "key_dim": 8, "hidden_dim": 4, "sample": True,
                            "tau": 0.5})]
CASES = {backend: _with(backend, BUILTINS + EXTRA + (REFERENCE_ONLY if backend == "reference" else []))
         for backend in ("reference", "fused", "blockwise")}


@parametrize_with_checks(CASES["reference"])
def test_reference(case, check):
    check(case)


@parametrize_with_checks(CASES["fused"])
def test_fused(case, check):
    check(case)


@parametrize_with_checks(CASES["blockwise"])
def test_blockwise(case, check):
    check(case)


def _label(name, options):
    return name + "".join(f" {k}={v}" for k, v in sorted(options.items()))


def _check_lists():
    return {_label(name, options): [c.name for c in applicable_checks(make_case(name, options, ref))]
            for cases in CASES.values() for name, options, ref in cases}


def test_every_builtin_runs_its_pinned_checks():
    """A dropped capability (or a check that stops applying) changes this list: it must fail, not shrink
    the suite silently. After an intended change: ATTNZOO_UPDATE_SNAPSHOT=1 pytest -k pinned_checks."""
    got = _check_lists()
    if os.environ.get("ATTNZOO_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip("snapshot rewritten")
    want = json.loads(SNAPSHOT.read_text())
    diff = {k: {"missing": sorted(set(want.get(k, ())) - set(got.get(k, ()))),
                "new": sorted(set(got.get(k, ())) - set(want.get(k, ())))}
            for k in set(want) | set(got) if want.get(k) != got.get(k)}
    assert not diff, f"conformance checks changed: {json.dumps(diff, indent=1)}"
    # every case is checked against its formula, but for the sampled ones (their draws: check_sampling)
    assert all("check_reference_formula" in checks or "check_sampling" in checks for checks in got.values())
