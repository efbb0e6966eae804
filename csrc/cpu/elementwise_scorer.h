// The elementwise family on blocks: s_ij = g(r_ij), r_ij = sum_h w_h phi(a_ih, b_jh), vectorised
// over keys j (the b block is kept transposed, H x kBK). Terms phi (TermOps): tanh(a + b),
// |a - b|, (a - b)^2, each computed from a and b themselves (a difference is never expanded);
// profiles g (params.h): identity, boxcar, epanechnikov. Gradients, with dr = ds g'(r) and
// gh_ijh = dr_ij w_h dphi/da: da_ih += sum_j gh_ijh, db_jh += sign * sum_i gh_ijh (sign: dphi/db
// over dphi/da, +1 for tanh, -1 for the differences), dw_h += sum_ij dr_ij phi_ijh.
#pragma once
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/driver.h"
#include "cpu/fast_tanh.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

template <int64_t TERM>
struct TermOps;
template <>
struct TermOps<kTanh> {
  static constexpr bool kDbNegated = false;
  template <class V>
  static V value(V a, V b) {
    return fast_tanh(a + b);
  }
  template <class V>
  static V deriv(V phi, V, V) {  // d tanh(a + b) / da = 1 - tanh^2
    return V(1) - phi * phi;
  }
};
template <>
struct TermOps<kAbsDiff> {
  static constexpr bool kDbNegated = true;
  template <class V>
  static V value(V a, V b) {
    return (a - b).abs();
  }
  template <class V>
  static V deriv(V, V a, V b) {  // sign(a - b), 0 at a == b (as torch.abs's gradient)
    const V d = a - b, zero(0), one(1);
    return V::blendv(zero, one, d > zero) - V::blendv(zero, one, d < zero);
  }
};
template <>
struct TermOps<kSqDiff> {
  static constexpr bool kDbNegated = true;
  template <class V>
  static V value(V a, V b) {
    const V d = a - b;
    return d * d;
  }
  template <class V>
  static V deriv(V, V a, V b) {
    const V d = a - b;
    return d + d;
  }
};

// g(r) on s[a, e) in place (NaN stays NaN).
template <typename T>
void apply_profile(int64_t profile, T* s, int64_t a, int64_t e) {
  const T ninf = -std::numeric_limits<T>::infinity();
  if (profile == kBoxcar) {
    for (int64_t j = a; j < e; ++j) s[j] = s[j] <= T(1) ? T(0) : (s[j] > T(1) ? ninf : s[j]);
  } else if (profile == kEpanechnikov) {
    for (int64_t j = a; j < e; ++j) s[j] = s[j] < T(1) ? std::log1p(-s[j]) : (s[j] >= T(1) ? ninf : s[j]);
  }
}

// a (B, Nq, H), b (B, Nk, H), w (H,); contiguous T. dscore: da (B, Nq, H) written per query
// block; acc[1] = db (B, Nk, H), acc[2] = dw (H,). dscore() must follow score() of the same block.
template <typename T, int64_t TERM>
struct ElementwiseScorer {
  using V = Vectorized<T>;
  using Term = TermOps<TERM>;
  static constexpr int64_t VS = V::size();
  const T *a, *bb, *w;
  int64_t Nq, Nk, H, profile;
  T* da;
  std::vector<T> bT, dbT;  // (H, kBK), (H, kBK)
  std::vector<double> dws;  // (H,): the block's dw, summed in double (it cancels: sum_j ds_ij = 0 per row)
  std::vector<T> dR;            // epanechnikov's backward: dr = ds g'(r) of a block (kBQ, kBK)
  // Forward-only exp form of tanh (use_exp): tanh(a + b) = 1 - 2 / (1 + e^{2a} e^{2b}), so
  // r_ij = sum_h (-2 w_h) (1 / (1 + ea_ih eb_jh) - 1/2) with ea = exp(2a), eb = exp(2b)
  // precomputed by the caller: one FMA and one reciprocal per element instead of a rational tanh.
  // Only valid while ea * eb stays finite and normal (|a|, |b| <= kExpBound).
  const T *ea = nullptr, *eb = nullptr;
  std::vector<T> w2;  // -2 w

  ElementwiseScorer(const T* a_, const T* b_, const T* w_, int64_t Nq_, int64_t Nk_, int64_t H_, int64_t profile_,
                    T* da_)
      : a(a_), bb(b_), w(w_), Nq(Nq_), Nk(Nk_), H(H_), profile(profile_), da(da_), bT(H_ * kBK, T(0)) {
    if (da) {
      dbT.assign(H * kBK, T(0));
      dws.assign(H, 0.0);
      if (profile == kEpanechnikov) dR.assign(kBQ * kBK, T(0));
    }
  }

  static int64_t round_up(int64_t x) { return (x + VS - 1) / VS * VS; }

  // ea_ (B, Nq, H) = exp(2a), eb_ (B, Nk, H) = exp(2b); score() then uses the exp form (tanh only).
  void use_exp(const T* ea_, const T* eb_) {
    static_assert(TERM == kTanh, "the exp form is tanh's");
    ea = ea_;
    eb = eb_;
    w2.resize(H);
    for (int64_t h = 0; h < H; ++h) w2[h] = T(-2) * w[h];
  }

  void score(const ScoreBlock& blk, T* S, int64_t ldS) {
    const int64_t b = blk.b, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    const int64_t *ra = blk.ra, *re = blk.re;
    const T* bblk = (ea ? eb : bb) + (blk.kb * Nk + j0) * H;
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t h = 0; h < H; ++h) bT[h * kBK + j] = bblk[j * H + h];
    if (ea) {  // exp form: w_h tanh(a + b) = -2 w_h (1 / (1 + e^2a e^2b) - 1/2)
      const V one(T(1));
      score_rows(b, i0, nq, S, ldS, ra, re, ea, w2.data(),
                 [one](V av, V bv) { return recip_minus_half(at::vec::fmadd(av, bv, one)); });
    } else {
      score_rows(b, i0, nq, S, ldS, ra, re, a, w, [](V av, V bv) { return Term::value(av, bv); });
    }
    if (profile != kIdentity)
      for (int64_t r = 0; r < nq; ++r) apply_profile(profile, S + r * ldS, ra[r], re[r]);
  }

  // r_ij = sum_h wts_h * term(A_ih, bT_hj) for the valid keys of each row, 4 vectors of keys at a time.
  template <typename TermFn>
  void score_rows(int64_t b, int64_t i0, int64_t nq, T* S, int64_t ldS, const int64_t* ra, const int64_t* re,
                  const T* A, const T* wts, TermFn term) {
    for (int64_t r = 0; r < nq; ++r) {
      if (re[r] <= ra[r]) continue;
      const T* ar = A + (b * Nq + i0 + r) * H;
      T* s = S + r * ldS;
      const int64_t end = round_up(re[r]);
      int64_t j = ra[r] - ra[r] % VS;
      for (; j + 4 * VS <= end; j += 4 * VS) {
        V s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
        const T* bt = bT.data() + j;
        for (int64_t h = 0; h < H; ++h, bt += kBK) {
          const V av(ar[h]), wv(wts[h]);
          s0 = at::vec::fmadd(wv, term(av, V::loadu(bt)), s0);
          s1 = at::vec::fmadd(wv, term(av, V::loadu(bt + VS)), s1);
          s2 = at::vec::fmadd(wv, term(av, V::loadu(bt + 2 * VS)), s2);
          s3 = at::vec::fmadd(wv, term(av, V::loadu(bt + 3 * VS)), s3);
        }
        s0.store(s + j);
        s1.store(s + j + VS);
        s2.store(s + j + 2 * VS);
        s3.store(s + j + 3 * VS);
      }
      for (; j < end; j += VS) {
        V s0(T(0));
        const T* bt = bT.data() + j;
        for (int64_t h = 0; h < H; ++h, bt += kBK) s0 = at::vec::fmadd(V(wts[h]), term(V(ar[h]), V::loadu(bt)), s0);
        s0.store(s + j);
      }
    }
  }

  // Epanechnikov: dr = ds g'(r) = -ds / (1 - r) inside the support (r < 1), 0 outside; r is
  // recomputed (the block's bT is still staged by score()).
  const T* profile_grad(const ScoreBlock& blk, const T* dS, int64_t ldS) {
    score_rows(blk.b, blk.i0, blk.nq, dR.data(), kBK, blk.ra, blk.re, a, w,
               [](V av, V bv) { return Term::value(av, bv); });
    for (int64_t r = 0; r < blk.nq; ++r) {
      T* d = dR.data() + r * kBK;
      const T* ds = dS + r * ldS;
      const int64_t js = blk.ra[r] - blk.ra[r] % VS, je = round_up(blk.re[r]);
      for (int64_t j = js; j < je; ++j) d[j] = d[j] < T(1) ? -ds[j] / (T(1) - d[j]) : T(0);
    }
    return dR.data();
  }

  void dscore(const ScoreBlock& blk, const T* dS, int64_t ldS, T* const* acc) {
    if (profile == kBoxcar) return;  // g' = 0: the scores carry no gradient
    if (profile == kEpanechnikov) {
      dS = profile_grad(blk, dS, ldS);
      ldS = kBK;
    }
    const int64_t b = blk.b, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    const int64_t *ra = blk.ra, *re = blk.re;
    std::fill(dbT.begin(), dbT.end(), T(0));
    std::fill(dws.begin(), dws.end(), 0.0);
    for (int64_t r = 0; r < nq; ++r) {
      if (re[r] <= ra[r]) continue;
      const T* ar = a + (b * Nq + i0 + r) * H;
      T* dar = da + (b * Nq + i0 + r) * H;
      const T* ds = dS + r * ldS;
      const int64_t js = ra[r] - ra[r] % VS, je = round_up(re[r]);
      for (int64_t h = 0; h < H; ++h) {
        const V av(ar[h]), wv(w[h]);
        V gacc(T(0)), tacc(T(0));
        const T* bt = bT.data() + h * kBK;
        T* dbt = dbT.data() + h * kBK;
        for (int64_t j = js; j < je; j += VS) {
          const V bv = V::loadu(bt + j);
          const V phi = Term::value(av, bv);
          const V d = V::loadu(ds + j);
          const V g = d * wv * Term::deriv(phi, av, bv);
          gacc = gacc + g;
          if constexpr (Term::kDbNegated)
            (V::loadu(dbt + j) - g).store(dbt + j);
          else
            (V::loadu(dbt + j) + g).store(dbt + j);
          tacc = at::vec::fmadd(d, phi, tacc);
        }
        const auto sum = [](V& x, V& y) { return x + y; };
        dar[h] += at::vec::vec_reduce_all<T>(sum, gacc);
        dws[h] += at::vec::vec_reduce_all<T>(sum, tacc);
      }
    }
    T* db = acc[1] + (blk.kb * Nk + j0) * H;
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t h = 0; h < H; ++h) db[j * H + h] += dbT[h * kBK + j];
    for (int64_t h = 0; h < H; ++h) acc[2][h] += static_cast<T>(dws[h]);
  }
};

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
