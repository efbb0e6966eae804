// The Python module attnzoo._C: importing it registers the ops; build_info()
// reports how the extension was compiled.
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include "common/dtypes.h"
#include "common/params.h"
#include "cpu/isa.h"

namespace {

pybind11::list dtype_names(const attnzoo::Dtypes& dtypes) {
  pybind11::list names;
  for (const auto& d : dtypes) names.append(d.name);
  return names;
}

pybind11::dict code_dict(int64_t n, const char* (*name)(int64_t)) {
  pybind11::dict d;
  for (int64_t c = 0; c < n; ++c) d[name(c)] = c;
  return d;
}

pybind11::dict build_info() {
  pybind11::dict info;
  // The code lists of the kernels' enums (common/params.h), name -> code.
  info["poolings"] = code_dict(attnzoo::kNumPoolings, attnzoo::pooling_name);
  info["terms"] = code_dict(attnzoo::kNumTerms, attnzoo::term_name);
  info["profiles"] = code_dict(attnzoo::kNumProfiles, attnzoo::profile_name);
  // Device -> the dtypes its kernels are compiled for (common/dtypes.h), as torch names them.
  pybind11::dict dtypes;
  dtypes["cpu"] = dtype_names(attnzoo::kCpuDtypes);
#ifdef ATTNZOO_WITH_CUDA
  dtypes["cuda"] = dtype_names(attnzoo::kCudaDtypes);
#endif
  info["dtypes"] = dtypes;
  info["torch_version"] = TORCH_VERSION;
#ifdef ATTNZOO_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#if defined(CPU_CAPABILITY_AVX512)
  info["cpu_vector_isa"] = "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  info["cpu_vector_isa"] = "avx2";
#else
  info["cpu_vector_isa"] = "default";
#endif
  info["vector_width_float"] = static_cast<int>(at::vec::Vectorized<float>::size());
  // ISA of the run-time dispatched kernels (elementwise family): "avx512" or "avx2".
  info["cpu_isa_runtime"] = attnzoo::cpu::isa_name(attnzoo::cpu::runtime_isa());
#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
  info["cpu_isa_avx512_kernels"] = true;
#else
  info["cpu_isa_avx512_kernels"] = false;
#endif
  info["compiler"] = __VERSION__;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "attnzoo compiled kernels (ops are registered under torch.ops.attnzoo)";
  m.def("build_info", &build_info, "How this extension was compiled");
}
