// The values and softmax output the backward's dS reads, centred on their key batch's mean value row c.
// dS_ij = p_ij (dP_ij - D_i) with dP_ij - D_i = dO_i . (v_j - o_i): computed as dO_i . (v_j - c) - dO_i . (o_i - c),
// exact for any c as a row's weights sum to 1, so that un-centred values (~1e3) do not cancel in dP_ij - D_i.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/parallel.h"

namespace attnzoo::cpu {
inline namespace ATTNZOO_ISA {

template <typename T>
struct CentredValues {
  at::Tensor vc, oc;  // (Bk, Nk, Dv), (B, Nq, Dv): v - c[kb], o - c[b / G]; torch tensors so memory profilers see them

  // v (Bk, Nk, Dv), o (B, Nq, Dv) with B = Bk * G; c: the mean of v's finite entries per key batch and column.
  CentredValues(int64_t Bk, int64_t G, int64_t Nq, int64_t Nk, int64_t Dv, const T* v, const T* o)
      : vc(at::empty({Bk * Nk * Dv}, at::CppTypeToScalarType<T>::value)),
        oc(at::empty({Bk * G * Nq * Dv}, at::CppTypeToScalarType<T>::value)) {
    T* vd = vc.data_ptr<T>();
    T* od = oc.data_ptr<T>();
    parallel_tasks(Bk, (Nk + G * Nq) * Dv, [&](int64_t k0, int64_t k1) {
      std::vector<T> c(Dv);
      std::vector<int64_t> n(Dv);
      for (int64_t kb = k0; kb < k1; ++kb) {
        std::fill(c.begin(), c.end(), T(0));
        std::fill(n.begin(), n.end(), 0);
        const T* vb = v + kb * Nk * Dv;
        for (int64_t j = 0; j < Nk; ++j)
          for (int64_t d = 0; d < Dv; ++d)
            if (std::isfinite(vb[j * Dv + d])) {
              c[d] += vb[j * Dv + d];
              ++n[d];
            }
        for (int64_t d = 0; d < Dv; ++d) c[d] /= static_cast<T>(std::max<int64_t>(n[d], 1));
        for (int64_t j = 0; j < Nk; ++j)
          for (int64_t d = 0; d < Dv; ++d) vd[(kb * Nk + j) * Dv + d] = vb[j * Dv + d] - c[d];
        for (int64_t i = kb * G * Nq; i < (kb + 1) * G * Nq; ++i)
          for (int64_t d = 0; d < Dv; ++d) od[i * Dv + d] = o[i * Dv + d] - c[d];
      }
    });
  }

  const T* v() const { return vc.const_data_ptr<T>(); }
  const T* o() const { return oc.const_data_ptr<T>(); }
};

}  // namespace ATTNZOO_ISA
}  // namespace attnzoo::cpu
