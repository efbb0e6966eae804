// Schemas of the attnzoo operators. Semantics: attnzoo/ops/schemas.py and
// attnzoo/ops/reference.py (the eager oracle); tests check both sides agree.
#include <torch/library.h>

#define ATTNZOO_MASKS "Tensor? valid_lens, Tensor? mask, Tensor? bias, Tensor? alibi, int pooling, bool causal, int window"
#define ATTNZOO_SAVED "Tensor out, Tensor lse, Tensor argmax, Tensor soft_out"
#define ATTNZOO_FWD_OUT "(Tensor out, Tensor lse, Tensor argmax, Tensor soft_out, Tensor entropy)"
#define ATTNZOO_ENTROPY_GRAD "Tensor? grad_entropy=None, Tensor? saved_entropy=None"
#define ATTNZOO_NOISE "int? seed=None, float tau=1.0"
#define ATTNZOO_LAYOUT "int q_offset=0"

TORCH_LIBRARY(attnzoo, m) {
  m.def("bilinear_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_bias, float scale, " ATTNZOO_MASKS
        ", bool entropy=False, " ATTNZOO_NOISE ", " ATTNZOO_LAYOUT ") -> " ATTNZOO_FWD_OUT);
  m.def("bilinear_bwd(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor? key_bias, "
        "float scale, " ATTNZOO_MASKS ", bool bias_grad, " ATTNZOO_SAVED ", " ATTNZOO_ENTROPY_GRAD ", " ATTNZOO_NOISE ", " ATTNZOO_LAYOUT
        ") -> (Tensor dq, Tensor dk, Tensor dv, Tensor dkey_bias, Tensor dbias)");
  m.def("elementwise_fwd(Tensor a, Tensor b, Tensor w, Tensor v, int term, int profile, " ATTNZOO_MASKS
        ", bool entropy=False, " ATTNZOO_NOISE ", " ATTNZOO_LAYOUT ") -> " ATTNZOO_FWD_OUT);
  m.def("elementwise_bwd(Tensor grad_out, Tensor? grad_lse, Tensor a, Tensor b, Tensor w, Tensor v, int term, "
        "int profile, " ATTNZOO_MASKS
        ", bool bias_grad, " ATTNZOO_SAVED ", " ATTNZOO_ENTROPY_GRAD ", " ATTNZOO_NOISE ", " ATTNZOO_LAYOUT
        ") -> (Tensor da, Tensor db, Tensor dw, Tensor dv, Tensor dbias)");
}
