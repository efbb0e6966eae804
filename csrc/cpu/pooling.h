// The pooling policies of the CPU drivers (the interface and its room for poolings to come:
// common/pooling.h). Per pooling, three classes:
//
// Forward, block driver (driver.h), one object per thread, the state of up to bq rows:
//   Fwd(const FwdOut<T>& out, int64_t bq)
//   T* acc_rows(b, i0)                  where P.V accumulates rows i0.. of batch b (out or soft_out)
//   void start(nq)                      a new query block
//   void scan(pass, r, s, a, e, j0)     (only with traits.scan_passes > 0) a score-only sweep
//   void weigh(r, s, a, e, nk, j0, o)   row r's masked scores s[a, e) of the key block [j0, j0 + nk)
//                                       (-inf: no candidate) -> the weights of P.V in s[0, nk) (0
//                                       outside [a, e)); o: the row's P.V accumulator (Dv), rescaled
//                                       when the row's shift moves
//   void finish(r, b, i, o, value)      writes row r (query i of batch b) from its accumulator o;
//                                       value(j) points to key j's value row (hard's out)
// Backward, block driver, one object per thread:
//   Bwd(const BwdIn<T>& in, int64_t bq); kDvFromWeights: dv += P^T dO from the recomputed weights
//   bool start_row(r, i, dO)            row r = flat query i (b * Nq + i); false: no gradient
//   void weights(r, s, a, e, ld)        masked scores -> the forward's weights (0 outside [a, e))
//   void dweights(r, p, d, nk, ld)      d = dP = dO . v_j on entry, dS on exit (score_grad only)
//   void finish_dv(b, kb, i0, nq, dO, dv)   dv terms that do not come from the weights (hard: one-hot;
//                                       kb: the key batch of query batch b)
// Forward, small-D lane driver (small_d.h), the state of one row in registers:
//   Lanes: init(); V weigh(s, jv, rescale) (W keys' scores and indices -> their weights, calling
//   rescale(alpha) when the shift moves); finish(out, i, acc, value) (acc: the row's P.V sums).
//
// Soft: online softmax (running max and sum). Hard: the softmax (its output is soft_out, which
// the straight-through backward reads) plus the running first index of the maximum; out is that
// key's value row. Average: the count of valid keys; weights 1 (forward) and 1 / count (backward).
#pragma once
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/pooling.h"
#include "cpu/kernel_args.h"
#include "cpu/vec_math.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

// --- block driver -------------------------------------------------------------------------------

template <typename T>
struct SoftmaxFwd {
  static constexpr PoolingTraits kTraits = PoolingOf<kSoft>::traits;
  FwdOut<T> o;
  std::vector<T> m, l;  // running max and sum of exp(s - m)
  std::vector<T> t;     // with o.entropy: running sum of exp(s - m) (s - m)

  SoftmaxFwd(const FwdOut<T>& out, int64_t bq) : o(out), m(bq), l(bq), t(out.entropy ? bq : 0) {}

  T* acc_rows(int64_t b, int64_t i0) const { return o.out + (b * o.Nq + i0) * o.Dv; }

  void start(int64_t nq) {
    std::fill(m.begin(), m.begin() + nq, -std::numeric_limits<T>::infinity());
    std::fill(l.begin(), l.begin() + nq, T(0));
    if (o.entropy) std::fill(t.begin(), t.begin() + nq, T(0));
  }

  static T block_max(const T* s, int64_t a, int64_t e) {
    return e > a ? vmax(s + a, e - a) : -std::numeric_limits<T>::infinity();
  }

  void weigh(int64_t r, T* s, int64_t a, int64_t e, int64_t nk, int64_t, T* acc) {
    weigh_max(r, s, a, e, nk, block_max(s, a, e), acc);
  }

  // weigh() given the block maximum bm of s[a, e).
  void weigh_max(int64_t r, T* s, int64_t a, int64_t e, int64_t nk, T bm, T* acc) {
    const T ninf = -std::numeric_limits<T>::infinity();
    if (bm == ninf) {  // no candidate in this block
      vfill(s, nk, T(0));
      return;
    }
    const T mn = std::max(m[r], bm);
    vfill(s, a, T(0));
    vfill(s + e, nk - e, T(0));
    T tb = 0;
    const T sum = o.entropy ? exp_sub_sum_xlogx(s + a, e - a, mn, tb) : exp_sub_sum(s + a, e - a, mn);
    if (mn != m[r]) {
      const T alpha = m[r] == ninf || m[r] - mn < kLogTiny<T> ? T(0) : std::exp(m[r] - mn);
      if (l[r] != 0) vscale(acc, o.Dv, alpha);
      // sum exp(s - m_old)(s - m_old) relative to the new max: + (m_old - m_new) l, times alpha
      if (o.entropy) t[r] = l[r] != 0 ? alpha * (t[r] + (m[r] - mn) * l[r]) : T(0);
      l[r] *= alpha;
      m[r] = mn;
    }
    l[r] += sum;
    if (o.entropy) t[r] += tb;
  }

  // Whether row r had no candidate (a NaN score makes l NaN and the row NaN, like torch).
  bool empty(int64_t r) const { return l[r] == T(0); }

  template <typename Value>
  void finish(int64_t r, int64_t b, int64_t i, T* acc, const Value&) {
    if (empty(r)) {
      vfill(acc, o.Dv, T(0));
      o.lse[b * o.Nq + i] = -std::numeric_limits<T>::infinity();
      if (o.entropy) o.entropy[b * o.Nq + i] = T(0);
    } else {
      vscale(acc, o.Dv, T(1) / l[r]);
      o.lse[b * o.Nq + i] = m[r] + std::log(l[r]);
      if (o.entropy) o.entropy[b * o.Nq + i] = std::log(l[r]) - t[r] / l[r];  // H = log l - sum p (s - m)
    }
  }
};

template <typename T>
struct HardFwd {
  static constexpr PoolingTraits kTraits = PoolingOf<kHard>::traits;
  SoftmaxFwd<T> soft;       // accumulates into soft_out
  std::vector<int64_t> am;  // running first index of the maximum

  HardFwd(const FwdOut<T>& out, int64_t bq) : soft(out, bq), am(bq) {}

  T* acc_rows(int64_t b, int64_t i0) const { return soft.o.soft_out + (b * soft.o.Nq + i0) * soft.o.Dv; }

  void start(int64_t nq) {
    soft.start(nq);
    std::fill(am.begin(), am.begin() + nq, int64_t(-1));
  }

  void weigh(int64_t r, T* s, int64_t a, int64_t e, int64_t nk, int64_t j0, T* acc) {
    const T bm = SoftmaxFwd<T>::block_max(s, a, e);
    if (bm > soft.m[r]) {  // strictly: an earlier block keeps a tie; the first index in this one
      int64_t j = a;
      while (s[j] != bm) ++j;
      am[r] = j0 + j;
    }
    soft.weigh_max(r, s, a, e, nk, bm, acc);
  }

  template <typename Value>
  void finish(int64_t r, int64_t b, int64_t i, T* acc, const Value& value) {
    soft.finish(r, b, i, acc, value);
    const FwdOut<T>& o = soft.o;
    const bool empty = soft.empty(r);
    o.argmax[b * o.Nq + i] = empty ? -1 : am[r];
    T* oh = o.out + (b * o.Nq + i) * o.Dv;
    if (empty || am[r] < 0 || std::isnan(soft.l[r])) {  // a NaN score in the row: the output is NaN
      vfill(oh, o.Dv, empty ? T(0) : std::numeric_limits<T>::quiet_NaN());
    } else {
      const T* vr = value(am[r]);
      std::copy(vr, vr + o.Dv, oh);
    }
  }
};

template <typename T>
struct AverageFwd {
  static constexpr PoolingTraits kTraits = PoolingOf<kAverage>::traits;
  FwdOut<T> o;
  std::vector<T> n;  // valid keys so far

  AverageFwd(const FwdOut<T>& out, int64_t bq) : o(out), n(bq) {}

  T* acc_rows(int64_t b, int64_t i0) const { return o.out + (b * o.Nq + i0) * o.Dv; }

  void start(int64_t nq) { std::fill(n.begin(), n.begin() + nq, T(0)); }

  // s[a, e) is 0 for a valid key, -inf for a masked one.
  void weigh(int64_t r, T* s, int64_t a, int64_t e, int64_t nk, int64_t, T*) {
    vfill(s, a, T(0));
    vfill(s + e, nk - e, T(0));
    n[r] += finite_to(s + a, e - a, T(1));
  }

  template <typename Value>
  void finish(int64_t r, int64_t b, int64_t i, T* acc, const Value&) {
    if (n[r] == T(0)) {
      vfill(acc, o.Dv, T(0));
      o.lse[b * o.Nq + i] = -std::numeric_limits<T>::infinity();
    } else {
      vscale(acc, o.Dv, T(1) / n[r]);
      o.lse[b * o.Nq + i] = std::log(n[r]);
    }
  }
};

template <typename T>
struct SoftmaxBwd {
  static constexpr PoolingTraits kTraits = PoolingOf<kSoft>::traits;
  static constexpr bool kDvFromWeights = true;
  BwdIn<T> in;
  // the row's lse, D_i = dO_i . o_i - grad_lse_i + gH_i H_i, and gH_i (the entropy's gradient)
  std::vector<T> rl, delta, gh;

  SoftmaxBwd(const BwdIn<T>& in_, int64_t bq) : in(in_), rl(bq), delta(bq), gh(bq) {}

  bool start_row(int64_t r, int64_t i, const T* dO) {
    rl[r] = in.lse[i];
    delta[r] = vdot(dO, in.o_delta + i * in.Dv, in.Dv) - (in.grad_lse ? in.grad_lse[i] : T(0));
    gh[r] = in.grad_ent ? in.grad_ent[i] : T(0);
    delta[r] += gh[r] * (in.grad_ent ? in.ent[i] : T(0));
    return rl[r] != -std::numeric_limits<T>::infinity();  // empty row: no gradient (a NaN row's is NaN)
  }

  // p = exp(s - lse) on [a, e), 0 elsewhere up to ld.
  void weights(int64_t r, T* s, int64_t a, int64_t e, int64_t ld) {
    if (e > a) exp_sub_sum(s + a, e - a, rl[r]);
    vfill(s, a, T(0));
    vfill(s + e, ld - e, T(0));
  }

  // dS = p (dP - D_i), and with the entropy's gradient - gH_i p log p (log p = s - lse; 0 log 0 = 0).
  void dweights(int64_t r, const T* p, T* d, int64_t nk, int64_t ld) const {
    using V = Vectorized<T>;
    const V dv(delta[r]);
    int64_t j = 0;
    if (gh[r] != T(0)) {
      const V g(gh[r]), zero(T(0));
      for (; j + V::size() <= nk; j += V::size()) {
        const V pv = V::loadu(p + j);
        const V lp = V::blendv(pv.log(), zero, pv == zero);
        (pv * (V::loadu(d + j) - dv - g * lp)).store(d + j);
      }
      for (; j < nk; ++j) d[j] = p[j] * (d[j] - delta[r] - gh[r] * (p[j] > T(0) ? std::log(p[j]) : T(0)));
    } else {
      for (; j + V::size() <= nk; j += V::size()) (V::loadu(p + j) * (V::loadu(d + j) - dv)).store(d + j);
      for (; j < nk; ++j) d[j] = p[j] * (d[j] - delta[r]);
    }
    vfill(d + nk, ld - nk, T(0));
  }

  void finish_dv(int64_t, int64_t, int64_t, int64_t, const T*, T*) const {}
};

// The straight-through backward: the softmax's dS; dv through the forward's arg-max.
template <typename T>
struct HardBwd : SoftmaxBwd<T> {
  static constexpr PoolingTraits kTraits = PoolingOf<kHard>::traits;
  static constexpr bool kDvFromWeights = false;
  using SoftmaxBwd<T>::SoftmaxBwd;

  // dv_j += dO_i for j = argmax_i, rows i0 .. i0 + nq of batch b (keys of batch kb); dO: their rows.
  void finish_dv(int64_t b, int64_t kb, int64_t i0, int64_t nq, const T* dO, T* dv) const {
    const BwdIn<T>& in = this->in;
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t j = in.argmax[b * in.Nq + i0 + r];
      if (j >= 0) vadd(dv + (kb * in.Nk + j) * in.Dv, dO + r * in.Dv, in.Dv);
    }
  }
};

template <typename T>
struct AverageBwd {
  static constexpr PoolingTraits kTraits = PoolingOf<kAverage>::traits;
  static constexpr bool kDvFromWeights = true;
  BwdIn<T> in;
  std::vector<T> w;  // 1 / count = exp(-lse)

  AverageBwd(const BwdIn<T>& in_, int64_t bq) : in(in_), w(bq) {}

  bool start_row(int64_t r, int64_t i, const T*) {
    w[r] = std::exp(-in.lse[i]);
    return in.lse[i] != -std::numeric_limits<T>::infinity();
  }

  // s[a, e) is 0 for a valid key, -inf for a masked one.
  void weights(int64_t r, T* s, int64_t a, int64_t e, int64_t ld) {
    finite_to(s + a, e - a, w[r]);
    vfill(s, a, T(0));
    vfill(s + e, ld - e, T(0));
  }

  void dweights(int64_t, const T*, T*, int64_t, int64_t) const {}
  void finish_dv(int64_t, int64_t, int64_t, int64_t, const T*, T*) const {}
};

// --- small-D lane driver --------------------------------------------------------------------------

// Online softmax with a lazily raised shift (see small_d.h).
template <typename T>
struct SoftLanes {
  using V = Vectorized<T>;
  static constexpr PoolingTraits kTraits = PoolingOf<kSoft>::traits;
  // Shift floor: finite, so that exp(s - m) of -inf scores is 0 (never NaN) before any finite score.
  static constexpr T kLow = std::numeric_limits<T>::lowest();
  static constexpr T kSlack = std::is_same_v<T, float> ? T(8) : T(32);
  V l, mv, mth;
  T m;

  void init() {
    m = kLow;
    mv = V(kLow);
    mth = mv + V(kSlack);
    l = V(T(0));
  }

  template <typename Rescale>
  V weigh(V s, V, const Rescale& rescale) {
    if (C10_UNLIKELY(any_gt(s, mth))) {  // some lane exceeds m + slack: raise m
      const T mn = std::max(m, at::vec::vec_reduce_all<T>([](V& x, V& y) { return at::vec::maximum(x, y); }, s));
      const V alpha(std::exp(m - mn));
      m = mn;
      l = l * alpha;
      rescale(alpha);
      mv = V(mn);
      mth = mv + V(kSlack);
    }
    const V e = exp_small(s - mv);
    l = l + e;
    return e;
  }

  T sum() const {
    return at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, l);
  }

  // No finite score raised the shift: no valid key, or only -inf scores (masked lanes may have
  // added exp_small's ~1e-38 to l). A NaN score makes lt NaN: the row is NaN, like torch.
  bool empty(T lt) const { return (m == kLow && !std::isnan(lt)) || lt == T(0); }

  // Row i (flat) into `dst` (out, or soft_out for hard) and lse; acc: the row's P.V sums.
  void write(const FwdOut<T>& o, T* dst, int64_t i, const T* acc, T lt) const {
    if (empty(lt)) {
      vfill(dst, o.Dv, T(0));
      o.lse[i] = -std::numeric_limits<T>::infinity();
    } else {
      for (int64_t d = 0; d < o.Dv; ++d) dst[d] = acc[d] / lt;
      o.lse[i] = m + std::log(lt);
    }
  }

  template <typename Value>
  void finish(const FwdOut<T>& o, int64_t i, const T* acc, const Value&) const {
    write(o, o.out + i * o.Dv, i, acc, sum());
  }
};

// The softmax plus, per lane, the first index of the lane's max (strict >): the smallest index
// among the lanes holding the overall max is the first arg-max (as torch.argmax).
template <typename T>
struct HardLanes {
  using V = Vectorized<T>;
  static constexpr PoolingTraits kTraits = PoolingOf<kHard>::traits;
  SoftLanes<T> soft;
  V bestv, besti;

  void init() {
    soft.init();
    bestv = V(-std::numeric_limits<T>::infinity());
    besti = V(T(-1));
  }

  template <typename Rescale>
  V weigh(V s, V jv, const Rescale& rescale) {
    const V gt = s > bestv;
    bestv = V::blendv(bestv, s, gt);
    besti = V::blendv(besti, jv, gt);
    return soft.weigh(s, jv, rescale);
  }

  // value(j, d): component d of key j's value.
  template <typename Value>
  void finish(const FwdOut<T>& o, int64_t i, const T* acc, const Value& value) const {
    constexpr int64_t W = V::size();
    const T lt = soft.sum();
    soft.write(o, o.soft_out + i * o.Dv, i, acc, lt);
    const bool empty = soft.empty(lt);
    T bv[W], bi[W];
    bestv.store(bv);
    besti.store(bi);
    T best = -std::numeric_limits<T>::infinity();
    int64_t idx = -1;
    for (int64_t w = 0; w < W; ++w) {
      const int64_t wi = static_cast<int64_t>(bi[w]);
      if (wi >= 0 && (idx < 0 || bv[w] > best || (bv[w] == best && wi < idx))) {
        best = bv[w];
        idx = wi;
      }
    }
    if (empty) idx = -1;
    o.argmax[i] = idx;
    T* oh = o.out + i * o.Dv;
    const T none = empty ? T(0) : std::numeric_limits<T>::quiet_NaN();  // no arg-max in a NaN row
    if (std::isnan(lt)) idx = -1;  // a NaN score in the row: the output is NaN
    for (int64_t d = 0; d < o.Dv; ++d) oh[d] = idx >= 0 ? value(idx, d) : none;
  }
};

template <typename T>
struct AverageLanes {
  using V = Vectorized<T>;
  static constexpr PoolingTraits kTraits = PoolingOf<kAverage>::traits;
  V n;  // valid keys per lane

  void init() { n = V(T(0)); }

  // s: 0 for a valid key, -inf otherwise.
  template <typename Rescale>
  V weigh(V s, V, const Rescale&) {
    const V e = V::blendv(V(T(1)), V(T(0)), s == V(-std::numeric_limits<T>::infinity()));
    n = n + e;
    return e;
  }

  template <typename Value>
  void finish(const FwdOut<T>& o, int64_t i, const T* acc, const Value&) const {
    const T nt = at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, n);
    T* dst = o.out + i * o.Dv;
    if (nt == T(0)) {
      vfill(dst, o.Dv, T(0));
      o.lse[i] = -std::numeric_limits<T>::infinity();
    } else {
      for (int64_t d = 0; d < o.Dv; ++d) dst[d] = acc[d] / nt;
      o.lse[i] = std::log(nt);
    }
  }
};

// --- the policies of each pooling code ------------------------------------------------------------

template <int64_t P, typename T>
struct CpuPooling;
template <typename T>
struct CpuPooling<kSoft, T> {
  using Fwd = SoftmaxFwd<T>;
  using Bwd = SoftmaxBwd<T>;
  using Lanes = SoftLanes<T>;
};
template <typename T>
struct CpuPooling<kHard, T> {
  using Fwd = HardFwd<T>;
  using Bwd = HardBwd<T>;
  using Lanes = HardLanes<T>;
};
template <typename T>
struct CpuPooling<kAverage, T> {
  using Fwd = AverageFwd<T>;
  using Bwd = AverageBwd<T>;
  using Lanes = AverageLanes<T>;
};

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
