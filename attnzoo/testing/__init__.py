"""The conformance suite: run it on any registered variant, built-in or your own.

>>> from attnzoo.testing import check_variant
>>> check_variant("additive", query_dim=8, key_dim=8, hidden_dim=16)   # raises AssertionError naming the check

In pytest (sklearn's ``parametrize_with_checks`` style)::

    from attnzoo.testing import parametrize_with_checks

    @parametrize_with_checks(["my_variant", ("soft", {"score": "my_score"})])
    def test_conformance(case, check):
        check(case)

Checks are chosen by the variant's capabilities (registered ones plus the instance's
``capabilities``). A variant declares checks it is known to fail with
``expected_failures={"check_name": "reason"}`` at registration: pytest marks them
``xfail(strict=True)``, and :func:`check_variant` requires them to fail.
"""

from __future__ import annotations

import functools

import attnzoo

from .checks import CHECKS, Case, Check

__all__ = ["CHECKS", "Case", "Check", "applicable_checks", "check_variant", "parametrize_with_checks"]

_SIZES = (8, 8, 6)  # query, key, value dims of the suite's inputs


def _case(name: str, options: dict | None) -> Case:
    info = attnzoo.variant_info(name)
    return Case(name, {**info.example_options(*_SIZES), **(options or {})})


def applicable_checks(case: Case) -> list[Check]:
    """The checks that apply to ``case``'s capabilities, in a fixed order."""
    caps = case.capabilities
    return [c for c in CHECKS.values() if c.applies(caps)]


def check_variant(name: str, **options) -> list[str]:
    """Run every applicable check on ``create(name, **options)``; returns the names of the checks run.

    ``options`` update the variant's registered ``example_options`` for the suite's sizes
    (query and key dim 8, value dim 6). Raises ``AssertionError`` naming the failed check.
    """
    case = _case(name, options)
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

    ``variants``: names, or ``(name, options)`` pairs. Test ids read ``variant-check``
    (``-k "cosine and gradcheck"`` works); declared expected failures are ``xfail(strict=True)``.
    """
    import pytest

    params = []
    for item in variants:
        name, options = (item, None) if isinstance(item, str) else item
        case = _case(name, options)
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
