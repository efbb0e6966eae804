"""The conformance suite: run it on any registered variant, built-in or your own.

>>> from attnzoo.testing import check_variant
>>> check_variant("additive", query_dim=8, key_dim=8, hidden_dim=16)   # raises AssertionError naming the check

In pytest (sklearn's ``parametrize_with_checks`` style)::

    from attnzoo.testing import parametrize_with_checks

    @parametrize_with_checks(["my_variant", ("soft", {"score": "my_score"})])
    def test_conformance(case, check):
        check(case)

Give the suite your formula and it also compares the variant with it
(:func:`~attnzoo.testing.checks.check_reference_formula`): ``reference(attn, query, key)``
returns the scores ``(..., Nq, Nk)`` (multi-head: ``(..., H, Nq, Nk)``) computed from the
paper's formula with ``attn``'s parameters, not by calling the variant::

    check_variant("laplace", reference=lambda attn, q, k:
                  -(q.unsqueeze(-2) - k.unsqueeze(-3)).abs().sum(-1) / attn.score.bandwidth)
    parametrize_with_checks([("laplace", {}, my_reference)])

Checks are chosen by the variant's capabilities (registered ones plus the instance's
``capabilities``). A variant declares checks it is known to fail with
``expected_failures={"check_name": "reason"}`` at registration: pytest marks them
``xfail(strict=True)``, and :func:`check_variant` requires them to fail.
"""

from __future__ import annotations

import functools

import attnzoo

from .checks import CHECKS, Case, Check, Reference

__all__ = ["CHECKS", "Case", "Check", "Reference", "applicable_checks", "check_variant", "make_case",
           "parametrize_with_checks"]

_SIZES = (8, 8, 6)  # query, key, value dims of the suite's inputs


def make_case(name: str, options: dict | None = None, reference: Reference | None = None) -> Case:
    """The :class:`Case` the suite runs for ``create(name, **options)`` (example options filled in)."""
    info = attnzoo.variant_info(name)
    return Case(name, {**info.example_options(*_SIZES), **(options or {})}, reference)


def applicable_checks(case: Case) -> list[Check]:
    """The checks that apply to ``case``'s capabilities, in a fixed order."""
    caps = case.capabilities
    return [c for c in CHECKS.values() if c.applies(caps)]


def check_variant(name: str, *, reference: Reference | None = None, **options) -> list[str]:
    """Run every applicable check on ``create(name, **options)``; returns the names of the checks run.

    ``options`` update the variant's registered ``example_options`` for the suite's sizes
    (query and key dim 8, value dim 6); ``reference`` adds the formula check.
    Raises ``AssertionError`` naming the failed check.
    """
    case = make_case(name, options, reference)
    expected = attnzoo.variant_info(name).expected_failures
    ran = []
    for c in applicable_checks(case):
        try:
            c.fn(case)
        except Exception as exc:
            if c.name in expected:
                ran.append(c.name)
                continue
            raise AssertionError(f"{name}: {c.name} failed: {type(exc).__name__}: {exc}") from exc
        if c.name in expected:
            raise AssertionError(f"{name}: {c.name} passed but is declared an expected failure "
                                 f"({expected[c.name]}); remove it from expected_failures")
        ran.append(c.name)
    return ran


def parametrize_with_checks(variants):
    """pytest decorator: parametrize ``(case, check)`` over every applicable check of each variant.

    ``variants``: names, ``(name, options)`` pairs or ``(name, options, reference)`` triples. Test ids
    read ``variant-check`` (``-k "cosine and gradcheck"`` works); declared expected failures are
    ``xfail(strict=True)``.
    """
    import pytest

    params = []
    for item in variants:
        name, options, reference = (item, None, None) if isinstance(item, str) else (*item, None)[:3]
        case = make_case(name, options, reference)
        label = name if options is None else f"{name}[{','.join(f'{k}={v}' for k, v in options.items())}]"
        expected = attnzoo.variant_info(name).expected_failures
        for c in applicable_checks(case):
            marks = [pytest.mark.xfail(strict=True, reason=expected[c.name])] if c.name in expected else []
            params.append(pytest.param(case, _runner(c), id=f"{label}-{c.name}", marks=marks))
    return pytest.mark.parametrize("case, check", params)


def _runner(c: Check):
    @functools.wraps(c.fn)
    def run(case: Case):
        try:
            c.fn(case)
        except AssertionError as exc:
            raise AssertionError(f"{case.name}: {c.name}: {exc}") from exc

    return run
