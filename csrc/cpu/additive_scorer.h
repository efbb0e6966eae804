// Additive scores s_ij = sum_h w_h tanh(a_ih + b_jh) on blocks, vectorised over keys j
// (the b block is kept transposed, H x kBK), and their gradients with
// g_ijh = ds_ij w_h (1 - t_ijh^2): da_ih += sum_j g_ijh, db_jh += sum_i g_ijh, dw_h += sum_ij ds_ij t_ijh.
#pragma once
#include <vector>

#include "cpu/driver.h"
#include "cpu/fast_tanh.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

// a (B, Nq, H), b (B, Nk, H), w (H,); contiguous T. dscore: da (B, Nq, H) written per query
// block; acc[1] = db (B, Nk, H), acc[2] = dw (H,). dscore() must follow score() of the same block.
template <typename T>
struct AdditiveScorer {
  using V = Vectorized<T>;
  static constexpr int64_t VS = V::size();
  const T *a, *bb, *w;
  int64_t Nq, Nk, H;
  T* da;
  std::vector<T> bT, dbT, dwv;  // (H, kBK), (H, kBK), (H, VS)
  // Forward-only exp form (use_exp): tanh(a + b) = 1 - 2 / (1 + e^{2a} e^{2b}), so
  // s_ij = sum_h (-2 w_h) (1 / (1 + ea_ih eb_jh) - 1/2) with ea = exp(2a), eb = exp(2b)
  // precomputed by the caller: one FMA and one reciprocal per element instead of a rational tanh.
  // Only valid while ea * eb stays finite and normal (|a|, |b| <= kExpBound).
  const T *ea = nullptr, *eb = nullptr;
  std::vector<T> w2;  // -2 w

  AdditiveScorer(const T* a_, const T* b_, const T* w_, int64_t Nq_, int64_t Nk_, int64_t H_, T* da_)
      : a(a_), bb(b_), w(w_), Nq(Nq_), Nk(Nk_), H(H_), da(da_), bT(H_ * kBK, T(0)) {
    if (da) {
      dbT.assign(H * kBK, T(0));
      dwv.assign(H * VS, T(0));
    }
  }

  static int64_t round_up(int64_t x) { return (x + VS - 1) / VS * VS; }

  // ea_ (B, Nq, H) = exp(2a), eb_ (B, Nk, H) = exp(2b); score() then uses the exp form.
  void use_exp(const T* ea_, const T* eb_) {
    ea = ea_;
    eb = eb_;
    w2.resize(H);
    for (int64_t h = 0; h < H; ++h) w2[h] = T(-2) * w[h];
  }

  void score(const ScoreBlock& blk, T* S, int64_t ldS) {
    const int64_t b = blk.b, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    const int64_t *ra = blk.ra, *re = blk.re;
    const T* bblk = (ea ? eb : bb) + (b * Nk + j0) * H;
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t h = 0; h < H; ++h) bT[h * kBK + j] = bblk[j * H + h];
    if (ea) {  // exp form: w_h tanh(a + b) = -2 w_h (1 / (1 + e^2a e^2b) - 1/2)
      const V one(T(1));
      return score_rows(b, i0, nq, S, ldS, ra, re, ea, w2.data(),
                        [one](V av, V bv) { return recip_minus_half(at::vec::fmadd(av, bv, one)); });
    }
    score_rows(b, i0, nq, S, ldS, ra, re, a, w, [](V av, V bv) { return fast_tanh(av + bv); });
  }

  // s_ij = sum_h wts_h * term(A_ih, bT_hj) for the valid keys of each row, 4 vectors of keys at a time.
  template <typename Term>
  void score_rows(int64_t b, int64_t i0, int64_t nq, T* S, int64_t ldS, const int64_t* ra, const int64_t* re,
                  const T* A, const T* wts, Term term) {
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

  void dscore(const ScoreBlock& blk, const T* dS, int64_t ldS, T* const* acc) {
    const int64_t b = blk.b, i0 = blk.i0, nq = blk.nq, j0 = blk.j0, nk = blk.nk;
    const int64_t *ra = blk.ra, *re = blk.re;
    std::fill(dbT.begin(), dbT.end(), T(0));
    std::fill(dwv.begin(), dwv.end(), T(0));
    const V one(T(1));
    for (int64_t r = 0; r < nq; ++r) {
      if (re[r] <= ra[r]) continue;
      const T* ar = a + (b * Nq + i0 + r) * H;
      T* dar = da + (b * Nq + i0 + r) * H;
      const T* ds = dS + r * ldS;
      const int64_t js = ra[r] - ra[r] % VS, je = round_up(re[r]);
      for (int64_t h = 0; h < H; ++h) {
        const V av(ar[h]), wv(w[h]);
        V gacc(T(0)), tacc = V::loadu(dwv.data() + h * VS);
        const T* bt = bT.data() + h * kBK;
        T* dbt = dbT.data() + h * kBK;
        for (int64_t j = js; j < je; j += VS) {
          const V t = fast_tanh(av + V::loadu(bt + j));
          const V d = V::loadu(ds + j);
          const V g = d * wv * (one - t * t);
          gacc = gacc + g;
          (V::loadu(dbt + j) + g).store(dbt + j);
          tacc = at::vec::fmadd(d, t, tacc);
        }
        dar[h] += at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, gacc);
        tacc.store(dwv.data() + h * VS);
      }
    }
    T* db = acc[1] + (b * Nk + j0) * H;
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t h = 0; h < H; ++h) db[j * H + h] += dbT[h * kBK + j];
    for (int64_t h = 0; h < H; ++h)
      for (int64_t l = 0; l < VS; ++l) acc[2][h] += dwv[h * VS + l];
  }
};

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
