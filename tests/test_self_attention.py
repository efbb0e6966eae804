"""Self-attention in one argument: ``attn(x)`` is ``attn(x, x, x)`` and ``attn(q, k)`` is ``attn(q, k, k)``,
for every registered variant, with masks and the other call options passing through."""

from __future__ import annotations

import pytest
import torch

import attnzoo

D = 8


@pytest.mark.parametrize("name", attnzoo.list_variants())
def test_one_argument_is_self_attention(name):
    torch.manual_seed(0)
    attn = attnzoo.create(name, **attnzoo.variant_info(name).example_options(D, D, D)).double()
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(2, 6, D, generator=g, dtype=torch.float64) for _ in range(2))
    lengths = torch.tensor([6, 3])
    torch.testing.assert_close(attn(x, valid_lens=lengths), attn(x, x, x, valid_lens=lengths), atol=0, rtol=0)
    out, w = attn(x, y, return_weights=True)
    want, want_w = attn(x, y, y, return_weights=True)
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    torch.testing.assert_close(w, want_w, atol=0, rtol=0)
    assert not torch.equal(attn(x), attn(x, y, y))  # the one-argument form really reads x as the keys
