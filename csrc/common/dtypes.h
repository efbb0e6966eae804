// The dtypes the kernels are compiled for, per device: the validation accepts exactly these
// (check_float_dtype), build_info()["dtypes"] reports them (attnzoo's backend choice reads it), and
// each device's dispatch covers them: the CPU kernels run float32 and float64 (bfloat16 is
// computed in float32), the CUDA kernels dispatch ATTNZOO_DISPATCH_CUDA_DTYPES.
#pragma once
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <string>

namespace attnzoo {

struct DtypeName {
  c10::ScalarType type;
  const char* name;  // as torch spells it: str(torch.float32) == "torch.float32"
};

struct Dtypes {
  const DtypeName* list;
  size_t n;

  const DtypeName* begin() const { return list; }
  const DtypeName* end() const { return list + n; }
  bool has(c10::ScalarType t) const {
    for (const auto& d : *this)
      if (d.type == t) return true;
    return false;
  }
  // "float32, float64 or bfloat16"
  std::string names() const {
    std::string s;
    for (size_t i = 0; i < n; ++i) s += std::string(i == 0 ? "" : i + 1 == n ? " or " : ", ") + list[i].name;
    return s;
  }
};

inline constexpr DtypeName kCpuDtypeList[] = {
    {c10::ScalarType::Float, "float32"}, {c10::ScalarType::Double, "float64"}, {c10::ScalarType::BFloat16, "bfloat16"}};
inline constexpr DtypeName kCudaDtypeList[] = {{c10::ScalarType::Float, "float32"},
                                               {c10::ScalarType::Double, "float64"},
                                               {c10::ScalarType::BFloat16, "bfloat16"},
                                               {c10::ScalarType::Half, "float16"}};
inline constexpr Dtypes kCpuDtypes{kCpuDtypeList, sizeof(kCpuDtypeList) / sizeof(kCpuDtypeList[0])};
inline constexpr Dtypes kCudaDtypes{kCudaDtypeList, sizeof(kCudaDtypeList) / sizeof(kCudaDtypeList[0])};

}  // namespace attnzoo

// The CUDA kernels' dtype dispatch: exactly kCudaDtypes.
#define ATTNZOO_DISPATCH_CUDA_DTYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
