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

pybind11::dict build_info() {
  pybind11::dict info;
  // The pooling codes (name -> code) of the kernels' enum (common/params.h).
  pybind11::dict poolings;
#define ATTNZOO_POOLING_ENTRY(e, code, name) poolings[name] = static_cast<int64_t>(attnzoo::e);
  ATTNZOO_POOLINGS(ATTNZOO_POOLING_ENTRY)
#undef ATTNZOO_POOLING_ENTRY
  info["poolings"] = poolings;
  // The elementwise family's term and profile codes (params.h).
  pybind11::dict terms, profiles;
#define ATTNZOO_TERM_ENTRY(e, code, name) terms[name] = static_cast<int64_t>(attnzoo::e);
  ATTNZOO_TERMS(ATTNZOO_TERM_ENTRY)
#undef ATTNZOO_TERM_ENTRY
#define ATTNZOO_PROFILE_ENTRY(e, code, name) profiles[name] = static_cast<int64_t>(attnzoo::e);
  ATTNZOO_PROFILES(ATTNZOO_PROFILE_ENTRY)
#undef ATTNZOO_PROFILE_ENTRY
  info["terms"] = terms;
  info["profiles"] = profiles;
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
