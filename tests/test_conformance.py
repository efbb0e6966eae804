"""The conformance suite over every registered variant, on both backends."""

import attnzoo
from attnzoo.testing import parametrize_with_checks

BUILTINS = attnzoo.list_variants()
EXTRA = [
    ("hard", {"score": "cosine"}),
    ("local", {"score": "additive", "query_dim": 8, "key_dim": 8, "hidden_dim": 4, "window": 1}),
    ("soft", {"score": "general", "query_dim": 8, "key_dim": 8, "causal": True}),
    ("nadaraya_watson", {"kernel": "epanechnikov", "w": 0.3}),
    ("nadaraya_watson", {"kernel": "boxcar", "w": 0.3}),
    ("nadaraya_watson", {"learnable": True}),
    ("multihead", {"embed_dim": 8, "num_heads": 2, "kdim": 8, "vdim": 6, "score": "additive", "hidden_dim": 4,
                   "pooling": "hard"}),
    ("multihead", {"embed_dim": 8, "num_heads": 4, "kdim": 8, "vdim": 6, "window": 1}),
]


def _with(backend, items):
    return [(item, {"backend": backend}) if isinstance(item, str) else (item[0], {**item[1], "backend": backend})
            for item in items]


@parametrize_with_checks(_with("reference", BUILTINS + EXTRA))
def test_reference(case, check):
    check(case)


# the compact-support Nadaraya-Watson kernels have no fused form (they need -inf scores)
FUSABLE = BUILTINS + [e for e in EXTRA if e[1].get("kernel") not in ("epanechnikov", "boxcar")]


@parametrize_with_checks(_with("fused", FUSABLE))
def test_fused(case, check):
    check(case)
