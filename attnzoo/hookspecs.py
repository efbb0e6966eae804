"""Hook specifications of the ``attnzoo`` plugin system (pluggy project ``attnzoo``).

A plugin is any object or module with functions marked ``@attnzoo.hookimpl`` and
named after a spec below; packages expose one through the entry-point group
``attnzoo``, or register it at run time with :func:`attnzoo.register`.
"""

import pluggy

PROJECT = "attnzoo"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def attnzoo_register_scores(register):
    """Register score functions ``s(q, k)``.

    Call ``register(name, score_cls, *, description="")``; ``score_cls(**options)`` is an
    ``nn.Module`` whose ``forward(query (..., Nq, Dq), key (..., Nk, Dk))`` returns scores
    ``(..., Nq, Nk)``. A registered score composes with every pooling and with multi-head.
    """


@hookspec
def attnzoo_register_variants(register):
    """Register attention variants.

    Call ``register(name, factory, *, description="", capabilities=(), example_options=None,
    expected_failures=None)``; ``factory(**options)`` returns an :class:`attnzoo.Attention`.
    ``example_options(query_dim, key_dim, value_dim) -> dict`` gives options that build a
    working instance for those sizes (used by the conformance suite and benchmarks).
    """
