// Mask parameters shared by the CPU and CUDA kernels (plain data, no torch types),
// and the valid key range of one query row.
//
// Key j is valid for query (b, i) iff  lo <= j < hi  (row_range: valid_lens,
// causal, window)  and  mask[b, i, j]  (mask_ok; true when there is no mask).
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#ifdef __CUDACC__
#define ATTNZOO_HD __host__ __device__ __forceinline__
#else
#define ATTNZOO_HD inline
#endif

namespace attnzoo {

// Code lists (the poolings, the elementwise terms and profiles): X(enumerator, code, name)
// entries, in code order 0 .. n - 1. The per-entry macros below make each list's enum, count,
// names and dispatch; ATTNZOO_CODE_NAME and ATTNZOO_CODE_CASE expect the code in `c` (and the
// callable in `f`) of the enclosing function.
#define ATTNZOO_CODE_ENUMERATOR(e, code, name) e = code,
#define ATTNZOO_CODE_ONE(e, code, name) +1
#define ATTNZOO_CODE_NAME(e, code, name) \
  if (c == code) return name;
#define ATTNZOO_CODE_CASE(e, code, name) \
  if (c == code) return std::forward<F>(f)(std::integral_constant<int64_t, e>{});

// The poolings: (enumerator, code, name), in code order. One list for the enum, the validation
// (validate.h), the dispatch (pooling.h) and build_info()["poolings"]; attnzoo/ops/schemas.py
// POOLINGS mirrors it (tests/test_build_info.py keeps them equal).
#define ATTNZOO_POOLINGS(X) \
  X(kSoft, 0, "soft")       \
  X(kHard, 1, "hard")       \
  X(kAverage, 2, "average")

enum Pooling : int64_t { ATTNZOO_POOLINGS(ATTNZOO_CODE_ENUMERATOR) };
constexpr int64_t kNumPoolings = 0 ATTNZOO_POOLINGS(ATTNZOO_CODE_ONE);

// The codes are 0 .. kNumPoolings - 1.
ATTNZOO_HD bool valid_pooling(int64_t p) { return p >= 0 && p < kNumPoolings; }

// "soft", "hard", ... ("?" for an invalid code).
inline const char* pooling_name(int64_t c) {
  ATTNZOO_POOLINGS(ATTNZOO_CODE_NAME)
  return "?";
}

// The elementwise family's term phi(a_ih, b_jh) and outer profile g (its scores are
// s_ij = g(sum_h w_h phi(a_ih, b_jh))): (enumerator, code, name), in code order; mirrored by
// attnzoo/ops/schemas.py TERMS / PROFILES (tests/test_build_info.py keeps them equal).
#define ATTNZOO_TERMS(X)   \
  X(kTanh, 0, "tanh")      \
  X(kAbsDiff, 1, "abs_diff") \
  X(kSqDiff, 2, "sq_diff")
// identity: g(r) = r; boxcar: 0 for r <= 1, else -inf; epanechnikov: log(1 - r) for r < 1, else
// -inf (NaN stays NaN).
#define ATTNZOO_PROFILES(X)  \
  X(kIdentity, 0, "identity") \
  X(kBoxcar, 1, "boxcar")     \
  X(kEpanechnikov, 2, "epanechnikov")

enum Term : int64_t { ATTNZOO_TERMS(ATTNZOO_CODE_ENUMERATOR) };
enum Profile : int64_t { ATTNZOO_PROFILES(ATTNZOO_CODE_ENUMERATOR) };
constexpr int64_t kNumTerms = 0 ATTNZOO_TERMS(ATTNZOO_CODE_ONE);
constexpr int64_t kNumProfiles = 0 ATTNZOO_PROFILES(ATTNZOO_CODE_ONE);

inline const char* term_name(int64_t c) {
  ATTNZOO_TERMS(ATTNZOO_CODE_NAME)
  return "?";
}
inline const char* profile_name(int64_t c) {
  ATTNZOO_PROFILES(ATTNZOO_CODE_NAME)
  return "?";
}

// f(std::integral_constant<int64_t, TERM>{}) for the term code c (validated): the kernels
// instantiate their term inside f (host code).
template <class F>
decltype(auto) dispatch_term(int64_t c, F&& f) {
  ATTNZOO_TERMS(ATTNZOO_CODE_CASE)
  return std::forward<F>(f)(std::integral_constant<int64_t, kTanh>{});  // unreachable after validation
}

struct KeyRange {
  int64_t lo, hi;  // [lo, hi); empty when hi <= lo (hi is clamped to >= lo)
};

struct MaskParams {
  int64_t B, Nq, Nk;
  // Grouped keys: queries of batch b read the keys and values of batch b / kv_group (B = kv_group * Bk;
  // 1: one key batch per query batch). Multi-query / grouped-query attention without repeated keys.
  int64_t kv_group;
  // Query i sits at key position i + q_offset for causal, window and ALiBi (0: top-left; Nk - Nq: bottom-right,
  // the KV-cache convention).
  int64_t q_offset;
  const int64_t* valid_lens;  // (B, Nq) or nullptr
  int64_t vl_sb, vl_si;       // strides of valid_lens (elements)
  const bool* mask;           // (B, Nq, Nk) or nullptr; any strides (0 for broadcast dims)
  int64_t m_sb, m_si, m_sj;   // strides of mask (elements)
  bool causal;
  int64_t window;  // -1: no window; else |i - j| <= window
  int64_t pooling;  // Pooling
  // Positional terms added to the score of every valid key, after the family's (positions are the
  // indices): s_ij = (s_ij + bias[b, i, j]) - alibi[b] |i - j|. Both in the accumulation type A of
  // the kernels (float or double); nullptr: none.
  const void* bias;  // (B1, B2, Nq, Nk), read at [b / bias_b2, b % bias_b2, i, j]; stride 0 on broadcast dims
  int64_t bias_b2, bs_b1, bs_b2, bs_i, bs_j;
  const void* alibi;  // (B,) contiguous: the slope of each batch entry
  // Sampled hard attention (CPU): s'_ij = (s_ij + g(seed, b Nq + i, j)) * inv_tau after the positional terms,
  // g the Gumbel noise of common/philox.h; the backward scales dS by inv_tau.
  bool noise;
  uint64_t seed;
  double inv_tau;
};

ATTNZOO_HD bool has_positions(const MaskParams& p) { return p.bias != nullptr || p.alibi != nullptr || p.noise; }

// Pointer to bias[b, i, 0] (nullptr when there is no bias); step by bs_j along j.
template <class A>
ATTNZOO_HD const A* bias_row(const MaskParams& p, int64_t b, int64_t i) {
  if (p.bias == nullptr) return nullptr;
  return static_cast<const A*>(p.bias) + (b / p.bias_b2) * p.bs_b1 + (b % p.bias_b2) * p.bs_b2 + i * p.bs_i;
}

template <class A>
ATTNZOO_HD A alibi_slope(const MaskParams& p, int64_t b) {
  return p.alibi ? static_cast<const A*>(p.alibi)[b] : A(0);
}

// Score s of (b, i, j) with the positional terms; brow = bias_row(p, b, i), slope = alibi_slope(p, b).
template <class A>
ATTNZOO_HD A with_positions(const MaskParams& p, A s, const A* brow, A slope, int64_t i, int64_t j) {
  if (brow) s = s + brow[j * p.bs_j];
  if (p.alibi) {
    const int64_t pi = i + p.q_offset;
    const A dist = static_cast<A>(pi > j ? pi - j : j - pi);
    s = s - slope * dist;
  }
  return s;
}

// Where the gradient of the bias goes: d (A, the bias's (B1, B2, Nq, Nk) shape with its strides; 0 on
// broadcast dims). shared: several (b, i, j) map to one element (a broadcast bias): accumulate with care.
struct BiasGrad {
  void* d;  // nullptr: not wanted
  int64_t b2, s_b1, s_b2, s_i, s_j;
  bool shared;
};

template <class A>
ATTNZOO_HD A* dbias_row(const BiasGrad& g, int64_t b, int64_t i) {
  return static_cast<A*>(g.d) + (b / g.b2) * g.s_b1 + (b % g.b2) * g.s_b2 + i * g.s_i;
}

// Valid key range of the query at key position i given its valid length (pass Nk when there are no valid_lens).
ATTNZOO_HD KeyRange key_range(int64_t i, int64_t Nk, int64_t valid_len, bool causal, int64_t window) {
  int64_t lo = 0, hi = Nk;
  if (valid_len < hi) hi = valid_len;
  if (causal && i + 1 < hi) hi = i + 1;
  if (window >= 0) {
    if (i - window > lo) lo = i - window;
    if (i + window + 1 < hi) hi = i + window + 1;
  }
  if (hi < lo) hi = lo;
  return {lo, hi};
}

ATTNZOO_HD KeyRange row_range(const MaskParams& p, int64_t b, int64_t i) {
  const int64_t vl = p.valid_lens ? p.valid_lens[b * p.vl_sb + i * p.vl_si] : p.Nk;
  return key_range(i + p.q_offset, p.Nk, vl, p.causal, p.window);
}

// Pointer to mask[b, i, 0] (nullptr when there is no mask); step by m_sj along j.
ATTNZOO_HD const bool* mask_row(const MaskParams& p, int64_t b, int64_t i) {
  return p.mask ? p.mask + b * p.m_sb + i * p.m_si : nullptr;
}

ATTNZOO_HD bool mask_ok(const MaskParams& p, const bool* mrow, int64_t j) {
  return mrow == nullptr || mrow[j * p.m_sj];
}

}  // namespace attnzoo
