"""Deliberately broken variants, one defect each, to prove every conformance check can fail."""

from __future__ import annotations

import torch

import attnzoo
from attnzoo.pooling import masked_softmax


class Toy(attnzoo.Attention):
    """A correct scaled-dot soft attention with one parameter; subclasses break one thing."""

    capabilities = frozenset({"soft", "bfloat16", "bias"})
    takes_bias = True

    def __init__(self):
        super().__init__()
        self.temperature = torch.nn.Parameter(torch.ones(()) + 0.1 * torch.rand(()))

    def scores(self, q, k):
        return q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5 * self.temperature.to(q.dtype))

    def weights(self, s, valid):
        return masked_softmax(s, valid)

    def attend(self, q, k, v, spec, return_weights):
        w = self.weights(spec.add_positions(self.scores(q, k)), spec.dense(q.device))
        return w @ v, w


class IgnoresBias(Toy):
    def attend(self, q, k, v, spec, return_weights):
        w = self.weights(self.scores(q, k), spec.dense(q.device))
        return w @ v, w


class MaskBlindEntropy(Toy):
    def attend_entropy(self, q, k, v, spec, return_weights):
        out, w = self.attend(q, k, v, spec, True)
        p = torch.softmax(self.scores(q, k), -1)
        return out, (w if return_weights else None), -(p * p.log()).sum(-1)


class NeverSamples(Toy):
    """Claims to sample but takes the arg-max in training too."""

    capabilities = frozenset({"hard", "stochastic"})

    def weights(self, s, valid):
        from attnzoo.pooling import one_hot_argmax

        return one_hot_argmax(s, valid)


class WrongDtype(Toy):
    def attend(self, q, k, v, spec, rw):
        out, w = super().attend(q, k, v, spec, rw)
        return out.float(), w


class SloppyBfloat16(Toy):
    def attend(self, q, k, v, spec, rw):
        out, w = super().attend(q, k, v, spec, rw)
        return (out + 1 if out.dtype == torch.bfloat16 else out), w


class Unnormalised(Toy):
    def weights(self, s, valid):
        return torch.exp(s) * valid


class IgnoresMask(Toy):
    def attend(self, q, k, v, spec, rw):
        w = torch.softmax(self.scores(q, k), -1)
        return w @ v, w


class NaNOnEmptyRows(Toy):
    def weights(self, s, valid):
        return torch.softmax(s.masked_fill(~valid, float("-inf")), -1)


class HiddenPositions(Toy):
    def scores(self, q, k):
        return super().scores(q, k) + torch.arange(k.shape[-2], dtype=q.dtype)


class MixesQueries(Toy):
    def scores(self, q, k):
        return super().scores(q + q.mean(-2, keepdim=True), k)


class MixesBatch(Toy):
    def scores(self, q, k):
        return super().scores(q, k + k.mean(0, keepdim=True))


class FlattensBatchWrongly(Toy):
    def attend(self, q, k, v, spec, rw):
        out, w = super().attend(q, k, v, spec, rw)
        return out + (q.dim() - 3), w


class OffByOneLengths(Toy):
    def attend(self, q, k, v, spec, rw):
        if spec.valid_lens is not None:
            from dataclasses import replace

            spec = replace(spec, valid_lens=spec.valid_lens - 1)
        return super().attend(q, k, v, spec, rw)


class StaleWeights(Toy):
    def attend(self, q, k, v, spec, rw):
        out, w = super().attend(q, k, v, spec, rw)
        return out, w.roll(1, -1)


class _WrongGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class WrongGradient(Toy):
    def scores(self, q, k):
        return super().scores(_WrongGrad.apply(q), k)


class UnsavedState(Toy):
    def __init__(self):
        super().__init__()
        self.shift = torch.randn(())  # a plain attribute: not in the state_dict

    def scores(self, q, k):
        return super().scores(q, k) + self.shift * k.sum(-1).unsqueeze(-2)


class Noisy(Toy):
    def scores(self, q, k):
        return super().scores(q, k) + 1e-3 * torch.randn(q.shape[-2], k.shape[-2], dtype=q.dtype)


class NoValidation(Toy):
    def forward(self, query, key, value, mask=None, *, valid_lens=None, return_weights=False):
        w = torch.softmax(self.scores(query, key), -1)
        out = w @ value
        return (out, w) if return_weights else out


class FirstLengthOnly(Toy):
    def attend(self, q, k, v, spec, rw):
        if spec.valid_lens is not None:
            from dataclasses import replace

            spec = replace(spec, valid_lens=spec.valid_lens[..., :1])
        return super().attend(q, k, v, spec, rw)


class LastOnTies(Toy):
    capabilities = frozenset({"hard", "bfloat16"})

    def weights(self, s, valid):
        s = s.masked_fill(~valid, float("-inf"))
        last = s.shape[-1] - 1 - s.flip(-1).argmax(-1, keepdim=True)
        return torch.zeros_like(s).scatter_(-1, last, 1.0) * valid.any(-1, keepdim=True)


def toy_reference(attn, q, k):
    """The toy's formula: ``q . k / (sqrt(d) temperature)``."""
    return torch.einsum("...id,...jd->...ij", q, k) / (q.shape[-1] ** 0.5 * attn.temperature)


class MissingTemperature(Toy):
    def scores(self, q, k):
        return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5


#: check name -> the variant that must fail it
BROKEN = {
    "check_output_shape_dtype": WrongDtype,
    "check_bfloat16": SloppyBfloat16,
    "check_weights_valid": Unnormalised,
    "check_masked_keys_ignored": IgnoresMask,
    "check_empty_rows": NaNOnEmptyRows,
    "check_key_permutation": HiddenPositions,
    "check_query_independence": MixesQueries,
    "check_batch_independence": MixesBatch,
    "check_batch_dims": FlattensBatchWrongly,
    "check_valid_lens_equals_mask": FirstLengthOnly,
    "check_hard_ties": LastOnTies,
    "check_bias_shifts_scores": IgnoresBias,
    "check_sampling": NeverSamples,
    "check_weights_pool_values": StaleWeights,
    "check_entropy": MaskBlindEntropy,
    "check_gradcheck": WrongGradient,
    "check_state_dict_roundtrip": UnsavedState,
    "check_deterministic": Noisy,
    "check_input_errors": NoValidation,
    "check_reference_formula": MissingTemperature,
}
#: check name -> the reference formula its broken variant is run with
REFERENCES = {"check_reference_formula": toy_reference}


class BrokenPlugin:
    @attnzoo.hookimpl
    def attnzoo_register_variants(self, register):
        register("toy", Toy, capabilities=Toy.capabilities)
        register("off_by_one_lengths", OffByOneLengths, capabilities=Toy.capabilities)
        for check, cls in BROKEN.items():
            register(f"broken_{check.removeprefix('check_')}", cls, capabilities=cls.capabilities)
