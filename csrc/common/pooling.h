// Poolings as policies: what the host code and the drivers know of each pooling, and the
// dispatch from its code (params.h ATTNZOO_POOLINGS) to its policy types.
//
// A pooling turns a row of scores into weights. Its policies (one per device and driver
// granularity: cpu/pooling.h for the CPU block driver and the small-D lane driver,
// cuda/pooling.cuh for both CUDA kernels) are the only pooling-specific code of the drivers;
// each one has
//   * the online state of a query row and its update per key block ("weigh"): it reads the
//     block's masked scores (-inf: not a candidate), keeps its running state (softmax: max and
//     sum; arg-max: first index of the running max; average: the count), turns the scores into
//     the weights of P.V in place and rescales the row's output accumulator when its shift moves;
//   * its finalisation: out (or soft_out), lse, and its per-row extras (argmax);
//   * its weight gradient for the backward: the weights the forward used, recomputed from the
//     saved per-row statistics (lse, argmax), and dS from dP = dO . v_j; plus dv's weights.
// The traits below say what the drivers must provide around a policy. They are the only place
// a pooling's nature is written down; the policies take their flags from here.
//
// Room for poolings to come (not implemented yet; the interface has the slots):
//   * more than one pass (sparsemax / entmax: a threshold tau by bisection over the key blocks):
//     PoolingTraits::scan_passes > 0 makes the CPU block driver sweep the key blocks that many
//     times calling the policy's scan(pass, ...) before the weighing sweep; the CUDA drivers
//     static_assert it is 0 until they loop likewise;
//   * per-row random draws (sampled hard: Gumbel-perturbed arg-max; dropout): weigh() receives the
//     batch, query and key indices, so a counter-based generator (Philox keyed by seed and
//     (b * Nq + i, j)) draws the same numbers whatever the block sizes, threads or device; the
//     seed travels in the policy's constructor arguments;
//   * extra per-row outputs: as the softmax's entropy (CPU, the ops' entropy=True), kept in the
//     policy's state beside its sum (rescaled with it), written by its finish() through its own
//     FwdOut pointer; its gradient enters the backward policy's dweights() (BwdIn::grad_ent).
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "common/params.h"

namespace attnzoo {

struct PoolingTraits {
  bool scores;       // reads the family's scores (false: every valid key scores 0, e.g. average)
  bool score_grad;   // its weights depend on the scores: the backward computes dS, dq, dk
  bool argmax;       // outputs argmax (B, Nq): the first index of the row maximum
  bool soft_out;     // outputs soft_out (B, Nq, Dv), the softmax output its backward reads
  bool exact_ties;   // compares scores exactly: equal keys must score equally wherever they lie
  int scan_passes;   // sweeps over the keys before the weighing one (0: online, one pass)
};

// The traits of each pooling of ATTNZOO_POOLINGS.
template <int64_t P>
struct PoolingOf;
template <>
struct PoolingOf<kSoft> {
  static constexpr PoolingTraits traits{true, true, false, false, false, 0};
};
template <>
struct PoolingOf<kHard> {  // arg-max forward, straight-through (softmax) backward
  static constexpr PoolingTraits traits{true, true, true, true, true, 0};
};
template <>
struct PoolingOf<kAverage> {  // uniform weights over the valid keys; lse = log(count)
  static constexpr PoolingTraits traits{false, false, false, false, false, 0};
};

#define ATTNZOO_POOLING_CHECK(e, code, name) \
  static_assert(sizeof(PoolingOf<e>::traits) > 0, "every pooling of ATTNZOO_POOLINGS has traits");
ATTNZOO_POOLINGS(ATTNZOO_POOLING_CHECK)
#undef ATTNZOO_POOLING_CHECK

// The traits of a pooling code (validated: valid_pooling); host code (device code reads
// PoolingOf<P>::traits in constant expressions).
constexpr PoolingTraits pooling_traits(int64_t p) {
#define ATTNZOO_POOLING_TRAITS(e, code, name) \
  if (p == code) return PoolingOf<e>::traits;
  ATTNZOO_POOLINGS(ATTNZOO_POOLING_TRAITS)
#undef ATTNZOO_POOLING_TRAITS
  return PoolingTraits{};
}

// f(std::integral_constant<int64_t, P>{}) for the pooling code c (validated): the drivers
// instantiate their policy for P inside f.
template <class F>
decltype(auto) dispatch_pooling(int64_t c, F&& f) {
  ATTNZOO_POOLINGS(ATTNZOO_CODE_CASE)
  return std::forward<F>(f)(std::integral_constant<int64_t, kSoft>{});  // unreachable after validation
}

}  // namespace attnzoo
