// Counter-based Gumbel noise of sampled hard attention: g(seed, row, key) = -log(-log u), u from
// Philox4x32-10 (Salmon et al. 2011) with counter (key_lo, key_hi, row_lo, row_hi) and key
// (seed_lo, seed_hi); u = (x + 1/2) / 2^52 for the 52 bits x = w0 << 20 | w1 >> 12, so 0 < u < 1.
// The same numbers as attnzoo/sampling.py (tests compare them), whatever the blocking: the forward
// and the backward recompute the same draws.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/params.h"

namespace attnzoo {

ATTNZOO_HD double philox_uniform(uint64_t seed, uint64_t row, uint64_t key) {
  uint32_t c0 = static_cast<uint32_t>(key), c1 = static_cast<uint32_t>(key >> 32);
  uint32_t c2 = static_cast<uint32_t>(row), c3 = static_cast<uint32_t>(row >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0, p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  const uint64_t x = (static_cast<uint64_t>(c0) << 20) | (c1 >> 12);
  return (static_cast<double>(x) + 0.5) * 0x1p-52;
}

ATTNZOO_HD double gumbel_noise(uint64_t seed, uint64_t row, uint64_t key) {
  return -std::log(-std::log(philox_uniform(seed, row, key)));
}

}  // namespace attnzoo
