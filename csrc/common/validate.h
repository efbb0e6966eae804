// Input validation of the attnzoo ops, shared by the CPU and CUDA implementations
// (host code, device-agnostic). Every failure is a TORCH_CHECK naming the op, the
// argument, what it got and what it needs.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>

#include <sstream>
#include <string>
#include <vector>

#include "common/dtypes.h"
#include "common/params.h"
#include "common/tensors.h"

namespace attnzoo {

inline std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

// Check t has exactly `shape`; `names` spells the dims, e.g. "(B, Nk)".
inline void check_shape(const char* op, const char* arg, const at::Tensor& t, std::vector<int64_t> shape,
                        const char* names) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), op, ": ", arg, " must have shape ", names, " = ",
              shape_str(shape), ", got ", shape_str(t.sizes()));
}

inline void check_rank(const char* op, const char* arg, const at::Tensor& t, int64_t rank, const char* names) {
  TORCH_CHECK(t.dim() == rank, op, ": ", arg, " must be ", rank, "-D ", names, ", got ", t.dim(), "-D tensor of shape ",
              shape_str(t.sizes()));
}

// `dtypes`: the device's kernel dtypes (common/dtypes.h).
inline void check_float_dtype(const char* op, const char* arg, const at::Tensor& t, const Dtypes& dtypes) {
  TORCH_CHECK(dtypes.has(t.scalar_type()), op, ": ", arg, " must be ", dtypes.names(), ", got ", t.scalar_type());
}

// "0 (soft), 1 (hard) or 2 (average)": the n codes of a code list (params.h) and their names.
inline std::string code_choices(int64_t n, const char* (*name)(int64_t)) {
  std::ostringstream o;
  for (int64_t c = 0; c < n; ++c) o << (c == 0 ? "" : c + 1 == n ? " or " : ", ") << c << " (" << name(c) << ")";
  return o.str();
}
inline std::string pooling_choices() { return code_choices(kNumPoolings, pooling_name); }

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                             const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", arg, " must have the dtype of ", ref_arg, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " must be on the device of ", ref_arg, " (", ref.device(),
              "), got ", t.device());
}

// bias: float, (B1, B2, Nq, Nk) or (B, Nq, Nk), each dim its full size or 1 (broadcast), B1 B2 = B.
inline void check_bias(const char* op, const at::Tensor& t, const char* ref_arg, const at::Tensor& ref, int64_t B,
                       int64_t Nq, int64_t Nk) {
  const char* names = "(B1, B2, Nq, Nk) or (B, Nq, Nk), each dim its size or 1, B1 * B2 = B";
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": bias must be a float tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 3 || t.dim() == 4, op, ": bias must be ", names, ", got shape ", shape_str(t.sizes()));
  const int64_t n = t.dim(), q = t.size(n - 2), k = t.size(n - 1);
  const int64_t b1 = t.size(0), b2 = n == 4 ? t.size(1) : 1;
  bool ok = (q == Nq || q == 1) && (k == Nk || k == 1) && b1 >= 1 && b2 >= 1;
  if (ok && B > 0) ok = b2 > 1 ? (B % b2 == 0 && (b1 == 1 || b1 * b2 == B)) : B % b1 == 0;
  TORCH_CHECK(ok, op, ": bias must be ", names, " (B = ", B, ", Nq = ", Nq, ", Nk = ", Nk, "), got shape ",
              shape_str(t.sizes()));
  check_same_device(op, "bias", t, ref_arg, ref);
}

// valid_lens, mask, bias, alibi, pooling, window for an op with B, Nq, Nk; `ref`/`ref_arg` give the device.
inline void check_mask_args(const char* op, const at::Tensor& ref, const char* ref_arg, int64_t B, int64_t Nq,
                            int64_t Nk, const OptTensor& valid_lens, const OptTensor& mask, const OptTensor& bias,
                            const OptTensor& alibi, int64_t pooling, int64_t window) {
  if (valid_lens.has_value()) {
    const auto& vl = *valid_lens;
    TORCH_CHECK(vl.scalar_type() == at::kLong, op, ": valid_lens must be int64, got ", vl.scalar_type());
    check_shape(op, "valid_lens", vl, {B, Nq}, "(B, Nq)");
    check_same_device(op, "valid_lens", vl, ref_arg, ref);
  }
  if (mask.has_value()) {
    const auto& m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool, op, ": mask must be bool, got ", m.scalar_type());
    check_shape(op, "mask", m, {B, Nq, Nk}, "(B, Nq, Nk)");
    check_same_device(op, "mask", m, ref_arg, ref);
  }
  if (bias.has_value()) check_bias(op, *bias, ref_arg, ref, B, Nq, Nk);
  if (alibi.has_value()) {
    const auto& m = *alibi;
    TORCH_CHECK(at::isFloatingType(m.scalar_type()), op, ": alibi must be a float tensor, got ", m.scalar_type());
    check_shape(op, "alibi", m, {B}, "(B,)");
    check_same_device(op, "alibi", m, ref_arg, ref);
  }
  TORCH_CHECK(valid_pooling(pooling), op, ": pooling must be ", pooling_choices(), ", got ", pooling);
  TORCH_CHECK(window >= -1, op, ": window must be >= -1 (-1 = no window), got ", window);
}

// q (B, Nq, D), k (B, Nk, D), v (B, Nk, Dv), key_bias (B, Nk).
// `t` in the dtype and on the device of `ref`.
inline void check_like(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                       const at::Tensor& ref) {
  check_same_dtype(op, arg, t, ref_arg, ref);
  check_same_device(op, arg, t, ref_arg, ref);
}

// The per-query x (B, Nq, F), per-key y (B, Nk, F) and values v (B, Nk, Dv) of both families
// (F is D for bilinear, H for elementwise): ranks, shapes, a float dtype, y and v like x.
inline void check_xyv(const char* op, const char* xn, const at::Tensor& x, const char* yn, const at::Tensor& y,
                      const at::Tensor& v, const char* x_shape, const char* y_shape, const Dtypes& dtypes) {
  check_rank(op, xn, x, 3, x_shape);
  check_rank(op, yn, y, 3, y_shape);
  check_rank(op, "v", v, 3, "(B, Nk, Dv)");
  check_float_dtype(op, xn, x, dtypes);
  const int64_t B = x.size(0), Bk = y.size(0);
  TORCH_CHECK(Bk == 0 ? B == 0 : (B >= Bk && B % Bk == 0), op, ": ", yn, "'s batch Bk must equal or divide ", xn,
              "'s B = ", B, " (grouped keys: query batch b reads key batch b / (B / Bk)), got ", yn, " of shape ",
              shape_str(y.sizes()));
  check_shape(op, yn, y, {Bk, y.size(1), x.size(2)}, y_shape);
  check_shape(op, "v", v, {Bk, y.size(1), v.size(2)}, "(Bk, Nk, Dv)");
  check_like(op, yn, y, xn, x);
  check_like(op, "v", v, xn, x);
}

inline void check_bilinear_fwd(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const OptTensor& key_bias, const OptTensor& valid_lens,
                               const OptTensor& mask, const OptTensor& bias, const OptTensor& alibi,
                               int64_t pooling, int64_t window, const Dtypes& dtypes) {
  check_xyv(op, "q", q, "k", k, v, "(B, Nq, D)", "(Bk, Nk, D)", dtypes);
  const int64_t B = q.size(0), Nq = q.size(1), Nk = k.size(1);
  if (key_bias.has_value()) {
    check_shape(op, "key_bias", *key_bias, {k.size(0), Nk}, "(Bk, Nk)");
    check_like(op, "key_bias", *key_bias, "q", q);
  }
  check_mask_args(op, q, "q", B, Nq, Nk, valid_lens, mask, bias, alibi, pooling, window);
}


// a (B, Nq, H), b (B, Nk, H), w (H,), v (B, Nk, Dv); term and profile codes.
inline void check_elementwise_fwd(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
                                  const at::Tensor& v, int64_t term, int64_t profile, const OptTensor& valid_lens,
                                  const OptTensor& mask, const OptTensor& bias, const OptTensor& alibi,
                                  int64_t pooling, int64_t window, const Dtypes& dtypes) {
  TORCH_CHECK(term >= 0 && term < kNumTerms, op, ": term must be ", code_choices(kNumTerms, term_name), ", got ",
              term);
  TORCH_CHECK(profile >= 0 && profile < kNumProfiles, op, ": profile must be ",
              code_choices(kNumProfiles, profile_name), ", got ", profile);
  check_xyv(op, "a", a, "b", b, v, "(B, Nq, H)", "(Bk, Nk, H)", dtypes);
  const int64_t B = a.size(0), Nq = a.size(1), Nk = b.size(1);
  check_rank(op, "w", w, 1, "(H,)");
  check_shape(op, "w", w, {a.size(2)}, "(H,)");
  check_like(op, "w", w, "a", a);
  check_mask_args(op, a, "a", B, Nq, Nk, valid_lens, mask, bias, alibi, pooling, window);
}

// Backward extras: grad_out (B, Nq, Dv), grad_lse (B, Nq), and the saved forward outputs.
// `x` is q (bilinear) or a (elementwise); its dtype is the input dtype.
inline void check_bwd_saved(const char* op, const at::Tensor& x, const at::Tensor& v, const at::Tensor& grad_out,
                            const OptTensor& grad_lse, const at::Tensor& out, const at::Tensor& lse,
                            const at::Tensor& argmax, const at::Tensor& soft_out, int64_t pooling) {
  const int64_t B = x.size(0), Nq = x.size(1), Dv = v.size(2);
  const auto acc = acc_type(x.scalar_type());
  check_shape(op, "grad_out", grad_out, {B, Nq, Dv}, "(B, Nq, Dv)");
  check_like(op, "grad_out", grad_out, "the inputs", x);
  if (grad_lse.has_value()) {
    check_shape(op, "grad_lse", *grad_lse, {B, Nq}, "(B, Nq)");
    TORCH_CHECK(grad_lse->scalar_type() == acc, op, ": grad_lse must be ", acc, ", got ", grad_lse->scalar_type());
    check_same_device(op, "grad_lse", *grad_lse, "the inputs", x);
  }
  check_shape(op, "out", out, {B, Nq, Dv}, "(B, Nq, Dv)");
  check_shape(op, "lse", lse, {B, Nq}, "(B, Nq)");
  TORCH_CHECK(lse.scalar_type() == acc, op, ": lse must be ", acc, ", got ", lse.scalar_type());
  check_same_device(op, "out", out, "the inputs", x);
  check_same_device(op, "lse", lse, "the inputs", x);
  const PoolingTraits pt = pooling_traits(pooling);
  if (pt.argmax) {
    check_shape(op, "argmax", argmax, {B, Nq}, "(B, Nq)");
    TORCH_CHECK(argmax.scalar_type() == at::kLong, op, ": argmax must be int64, got ", argmax.scalar_type());
    check_same_device(op, "argmax", argmax, "the inputs", x);
    if (argmax.is_cpu() && argmax.numel() > 0) {  // the kernels index v with it (a CUDA check would sync)
      const int64_t lo = argmax.min().item<int64_t>(), hi = argmax.max().item<int64_t>();
      TORCH_CHECK(lo >= -1 && hi < v.size(1), op, ": argmax must lie in [-1, Nk) = [-1, ", v.size(1), "), got [",
                  lo, ", ", hi, "]");
    }
  }
  if (pt.soft_out) {
    check_shape(op, "soft_out", soft_out, {B, Nq, Dv}, "(B, Nq, Dv)");
    check_same_device(op, "soft_out", soft_out, "the inputs", x);
  }
}

// entropy=True (forward) is soft pooling's; `device_has` says whether this device's kernels compute it.
inline void check_entropy(const char* op, int64_t pooling, bool entropy, bool device_has) {
  TORCH_CHECK(!entropy || pooling == kSoft, op, ": entropy=True needs soft pooling (0), got pooling ", pooling);
  TORCH_CHECK(!entropy || device_has, op, ": entropy=True is computed by the CPU kernels only");
}

// The backward's entropy arguments: both or neither; (B, Nq) in the accumulation dtype; soft pooling.
inline void check_entropy_grad(const char* op, const at::Tensor& x, int64_t pooling, const OptTensor& grad_entropy,
                               const OptTensor& saved_entropy, bool device_has) {
  TORCH_CHECK(grad_entropy.has_value() == saved_entropy.has_value(), op,
              ": grad_entropy and saved_entropy go together (the entropy's gradient needs the forward's entropy)");
  if (!grad_entropy.has_value()) return;
  check_entropy(op, pooling, true, device_has);
  const int64_t B = x.size(0), Nq = x.size(1);
  const auto acc = acc_type(x.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_entropy", &*grad_entropy},
                                {"saved_entropy", &*saved_entropy}}) {
    check_shape(op, name, *t, {B, Nq}, "(B, Nq)");
    TORCH_CHECK(t->scalar_type() == acc, op, ": ", name, " must be ", acc, ", got ", t->scalar_type());
    check_same_device(op, name, *t, "the inputs", x);
  }
}

// Sampled hard attention's noise (seed given): hard pooling, tau > 0 finite; `device_has`: this device's kernels
// draw it.
inline void set_noise(const char* op, MaskParams& mp, const c10::optional<int64_t>& seed, double tau,
                      bool device_has) {
  if (!seed.has_value()) return;
  TORCH_CHECK(device_has, op, ": seed= (sampled hard attention) is drawn by the CPU kernels only");
  TORCH_CHECK(mp.pooling == kHard, op, ": seed= samples hard attention: pooling must be 1 (hard), got ", mp.pooling);
  TORCH_CHECK(*seed >= 0, op, ": seed must be >= 0, got ", *seed);
  TORCH_CHECK(std::isfinite(tau) && tau > 0, op, ": tau must be a finite number > 0, got ", tau);
  mp.noise = true;
  mp.seed = static_cast<uint64_t>(*seed);
  mp.inv_tau = 1.0 / tau;
}

// Grouped keys (Bk: the keys' batch, dividing B) and the queries' position offset (query i at key position
// i + q_offset); `device_has`: this device's kernels take both (else only Bk = B and q_offset = 0).
inline void set_layout(const char* op, MaskParams& mp, int64_t Bk, int64_t q_offset, bool device_has) {
  TORCH_CHECK(device_has || Bk == mp.B, op, ": grouped keys (key batch ", Bk, " for query batch ", mp.B,
              ") are read by the CPU kernels only; repeat the keys on this device");
  TORCH_CHECK(device_has || q_offset == 0, op, ": q_offset (", q_offset, ") is taken by the CPU kernels only");
  const int64_t bound = int64_t{1} << 40;
  TORCH_CHECK(q_offset > -bound && q_offset < bound, op, ": q_offset must lie in (-2^40, 2^40), got ", q_offset);
  mp.kv_group = Bk > 0 ? mp.B / Bk : 1;
  mp.q_offset = q_offset;
  // |i + q_offset - j| <= Nq + Nk + |q_offset| always holds: the clamp keeps the meaning, and i + window + 1 finite
  const int64_t far = mp.Nq + mp.Nk + (q_offset < 0 ? -q_offset : q_offset);
  if (mp.window > far) mp.window = far;
}

// The positional inputs in the kernels' accumulation dtype: bias as a 4-D (B1, B2, Nq, Nk) view
// (only its distinct elements are converted: a broadcast view stays a view), alibi contiguous.
struct Positions {
  at::Tensor bias, alibi;  // undefined: none
};

inline Positions positions_acc(const OptTensor& bias, const OptTensor& alibi, at::ScalarType acc) {
  Positions p;
  if (bias.has_value()) {
    at::Tensor t = bias->dim() == 3 ? bias->unsqueeze(1) : *bias;
    if (t.scalar_type() != acc) {
      at::Tensor c = t;
      for (int64_t d = 0; d < 4; ++d)
        if (t.stride(d) == 0 && t.size(d) > 1) c = c.narrow(d, 0, 1);
      t = c.to(acc).expand(t.sizes());
    }
    p.bias = t;
  }
  if (alibi.has_value()) p.alibi = alibi->to(acc).contiguous();
  return p;
}

// B2 of a 4-D bias over a batch of B (check_bias): its dim 1, else B / its dim 0.
inline int64_t bias_inner(const at::Tensor& bias4, int64_t B) {
  if (bias4.size(1) > 1) return bias4.size(1);
  return bias4.size(0) > 1 ? B / bias4.size(0) : 1;
}

// Mask parameters for the kernels. valid_lens / mask / positions must already be on the kernels'
// device (their data pointers are stored); strides are read from the tensors, so broadcast views work.
inline MaskParams make_mask_params(int64_t B, int64_t Nq, int64_t Nk, const OptTensor& valid_lens,
                                   const OptTensor& mask, const Positions& pos, int64_t pooling, bool causal,
                                   int64_t window) {
  MaskParams p{};
  p.B = B;
  p.Nq = Nq;
  p.Nk = Nk;
  if (valid_lens.has_value()) {
    p.valid_lens = valid_lens->const_data_ptr<int64_t>();
    p.vl_sb = valid_lens->stride(0);
    p.vl_si = valid_lens->stride(1);
  }
  if (mask.has_value()) {
    p.mask = mask->const_data_ptr<bool>();
    p.m_sb = mask->stride(0);
    p.m_si = mask->stride(1);
    p.m_sj = mask->stride(2);
  }
  p.causal = causal;
  // |i - j| <= Nq + Nk always holds: clamping keeps the meaning and keeps i + window + 1 from overflowing
  p.window = window > Nq + Nk ? Nq + Nk : window;
  p.pooling = pooling;
  p.kv_group = 1;  // set_layout sets grouped keys and the query offset
  p.q_offset = 0;
  if (pos.bias.defined()) {
    const at::Tensor& t = pos.bias;
    const auto st = [&](int64_t d) { return t.size(d) == 1 ? int64_t{0} : t.stride(d); };
    p.bias = t.const_data_ptr();
    p.bias_b2 = bias_inner(t, B);
    p.bs_b1 = st(0);
    p.bs_b2 = st(1);
    p.bs_i = st(2);
    p.bs_j = st(3);
  }
  if (pos.alibi.defined()) p.alibi = pos.alibi.const_data_ptr();
  return p;
}

inline BiasGradOut make_bias_grad(const Positions& pos, bool wanted, int64_t B, int64_t Nq, int64_t Nk) {
  BiasGradOut o;
  if (!wanted || !pos.bias.defined()) return o;
  const at::Tensor& t = pos.bias;
  o.d = at::zeros(t.sizes(), t.options());
  const int64_t b2 = bias_inner(t, B), full[4] = {b2 ? B / b2 : 0, b2, Nq, Nk};
  int64_t s[4];
  bool shared = false;
  for (int64_t d = 0; d < 4; ++d) {
    s[d] = t.size(d) == 1 ? 0 : o.d.stride(d);
    shared = shared || (t.size(d) == 1 && full[d] > 1);
  }
  o.g = BiasGrad{o.d.data_ptr(), b2, s[0], s[1], s[2], s[3], shared};
  return o;
}

// The bias gradient as the op returns it: the bias's shape and dtype (empty when not computed).
inline at::Tensor dbias_output(const BiasGradOut& o, const OptTensor& bias, const at::Tensor& like) {
  if (!o.d.defined()) return at::empty({0}, like.options());
  return o.d.reshape(bias->sizes()).to(bias->scalar_type());
}

}  // namespace attnzoo
