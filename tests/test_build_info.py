"""build_info() reports the kernels' own facts (the C++ pooling enum and the compiled dtypes), so
that Python need not repeat them, and they agree with what Python and the tests use."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import attnzoo.ops as ops
from attnzoo.ops.schemas import POOLINGS, PROFILES, TERMS

if not ops.EXTENSION:
    pytest.skip(f"attnzoo._C is not built ({ops.EXTENSION_STATUS})", allow_module_level=True)

TESTS = Path(__file__).resolve().parent


def _dtypes_in(test_file: str, name: str) -> set[str]:
    """The torch dtypes named in the module-level assignment `name` of a test file (read, not
    imported: the CUDA tests skip on import without a GPU), e.g. {"float32", "float64"}."""
    tree = ast.parse((TESTS / test_file).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)
                    and isinstance(n.value, ast.Name) and n.value.id == "torch"}
    raise AssertionError(f"{test_file} has no {name}")


def test_poolings_match_the_python_codes():
    assert ops.build_info()["poolings"] == POOLINGS


def test_elementwise_codes_match_the_python_codes():
    assert ops.build_info()["terms"] == TERMS
    assert ops.build_info()["profiles"] == PROFILES


def test_dtypes_are_named_per_device():
    dtypes = ops.build_info()["dtypes"]
    assert sorted(dtypes) == sorted(ops.compiled_devices())
    for device, names in dtypes.items():
        assert names and len(set(names)) == len(names), device
        for name in names:
            assert isinstance(getattr(torch, name), torch.dtype), (device, name)


def test_dtypes_cover_what_the_kernel_tests_exercise():
    dtypes = ops.build_info()["dtypes"]
    assert _dtypes_in("test_fused_ops_cpu.py", "TOL") <= set(dtypes["cpu"])
    if "cuda" in dtypes:
        assert _dtypes_in("test_fused_ops_cuda.py", "DTYPES") <= set(dtypes["cuda"])


@pytest.mark.parametrize("name", ops.build_info().get("dtypes", {}).get("cpu", []))
def test_every_reported_cpu_dtype_runs(name):
    dtype = getattr(torch, name)
    q, k, v = (torch.randn(2, 5, 3).to(dtype) for _ in range(3))
    for pooling in POOLINGS.values():
        out, lse, *_ = torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 1.0, None, None, None, None, pooling, False, -1)
        assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_unreported_cpu_dtypes_are_rejected_by_name():
    dtypes = ops.build_info()["dtypes"]["cpu"]
    q = torch.randn(2, 5, 3, dtype=torch.float16)
    assert "float16" not in dtypes
    with pytest.raises(RuntimeError, match="q must be " + ", ".join(dtypes[:-1]) + " or " + dtypes[-1]):
        torch.ops.attnzoo.bilinear_fwd(q, q, q, None, 1.0, None, None, None, None, 0, False, -1)


def test_pooling_codes_outside_the_enum_are_rejected_naming_each_pooling():
    q = torch.randn(2, 5, 3)
    choices = ", ".join(f"{code} ({name})" for name, code in sorted(POOLINGS.items(), key=lambda kv: kv[1]))
    head, _, last = choices.rpartition(", ")
    for bad in (-1, len(POOLINGS)):
        with pytest.raises(RuntimeError, match=re.escape(f"pooling must be {head} or {last}, got {bad}")):
            torch.ops.attnzoo.bilinear_fwd(q, q, q, None, 1.0, None, None, None, None, bad, False, -1)
