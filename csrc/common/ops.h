// The C++ entry points of the attnzoo ops, declared once for both devices: cpu/ops_cpu.h and
// cuda/ops_cuda.h expand ATTNZOO_OP_DECLARATIONS in attnzoo::cpu and attnzoo::cuda, and
// register_cpu.cpp / register_cuda.cpp register them with ATTNZOO_OP_REGISTRATIONS.
// The schemas (csrc/ops_schema.cpp, mirrored by attnzoo/ops/schemas.py) say what each argument
// means. Errors name the op as "attnzoo.<op>: ..." on both devices.
#pragma once
#include "common/tensors.h"

// The mask and positional arguments every op takes (ATTNZOO_MASKS in ops_schema.cpp).
#define ATTNZOO_MASK_PARAMS                                                                                 \
  const OptTensor &valid_lens, const OptTensor &mask, const OptTensor &bias, const OptTensor &alibi,        \
      int64_t pooling, bool causal, int64_t window
#define ATTNZOO_SAVED_PARAMS const at::Tensor &out, const at::Tensor &lse, const at::Tensor &argmax, const at::Tensor &soft_out
// The backward's entropy arguments (soft pooling): the entropy's gradient and the forward's entropy.
#define ATTNZOO_ENTROPY_GRAD_PARAMS const OptTensor &grad_entropy, const OptTensor &saved_entropy
// Sampled hard attention's noise (both passes): a seed (none: no noise) and the temperature.
#define ATTNZOO_NOISE_PARAMS const c10::optional<int64_t>& seed, double tau
// Where the queries sit (both passes): query i at key position i + q_offset (causal, window, ALiBi).
#define ATTNZOO_LAYOUT_PARAMS int64_t q_offset

#define ATTNZOO_OP_DECLARATIONS                                                                                 \
  Tensor5 bilinear_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias, \
                       double scale, ATTNZOO_MASK_PARAMS, bool entropy, ATTNZOO_NOISE_PARAMS,                     \
                       ATTNZOO_LAYOUT_PARAMS);                                                                    \
  Tensor5 bilinear_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& q,                \
                       const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias, double scale,         \
                       ATTNZOO_MASK_PARAMS, bool bias_grad, ATTNZOO_SAVED_PARAMS, ATTNZOO_ENTROPY_GRAD_PARAMS,    \
                       ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS);                                              \
  Tensor5 elementwise_fwd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, const at::Tensor& v,     \
                          int64_t term, int64_t profile, ATTNZOO_MASK_PARAMS, bool entropy, ATTNZOO_NOISE_PARAMS, \
                          ATTNZOO_LAYOUT_PARAMS);                                                                 \
  Tensor5 elementwise_bwd(const at::Tensor& grad_out, const OptTensor& grad_lse, const at::Tensor& a,             \
                          const at::Tensor& b, const at::Tensor& w, const at::Tensor& v, int64_t term,           \
                          int64_t profile, ATTNZOO_MASK_PARAMS, bool bias_grad, ATTNZOO_SAVED_PARAMS,            \
                          ATTNZOO_ENTROPY_GRAD_PARAMS, ATTNZOO_NOISE_PARAMS, ATTNZOO_LAYOUT_PARAMS);

// Inside TORCH_LIBRARY_IMPL(attnzoo, <Device>, m): registers ns::<op> for every op.
#define ATTNZOO_OP_REGISTRATIONS(m, ns)      \
  m.impl("bilinear_fwd", &ns::bilinear_fwd); \
  m.impl("bilinear_bwd", &ns::bilinear_bwd); \
  m.impl("elementwise_fwd", &ns::elementwise_fwd); \
  m.impl("elementwise_bwd", &ns::elementwise_bwd)
