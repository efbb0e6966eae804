// Run-time choice of the CPU vector ISA (see isa.h).
#include "cpu/isa.h"

#include <cctype>
#include <cstdlib>
#include <string>

namespace attnzoo::cpu {

namespace {

bool cpu_has_avx512() {
#if defined(ATTNZOO_HAVE_AVX512_KERNELS)
  // libgcc's cpu model also checks that the OS saves the AVX-512 state (XCR0).
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

CpuIsa choose_isa() {
  if (const char* env = std::getenv("ATTNZOO_CPU_ISA")) {
    std::string s(env);
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (s == "avx2") return CpuIsa::kAVX2;
  }
  return cpu_has_avx512() ? CpuIsa::kAVX512 : CpuIsa::kAVX2;
}

}  // namespace

CpuIsa runtime_isa() {
  static const CpuIsa isa = choose_isa();
  return isa;
}

const char* isa_name(CpuIsa isa) {
#if defined(__AVX2__)
  return isa == CpuIsa::kAVX512 ? "avx512" : "avx2";
#else
  return "default";  // not an x86-64 AVX2 build: no dispatch
#endif
}

}  // namespace attnzoo::cpu
