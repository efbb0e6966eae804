// CPU vector ISA of the kernels: the extension is compiled for AVX2 + FMA (setup.py), and the
// elementwise family's kernels and the bilinear uniform scores are compiled a second time for
// AVX-512 (kernels_avx512.cpp), chosen at run time (runtime_isa). ISA-neutral: safe to include
// in any translation unit.
#pragma once

// Namespace of code compiled once per ISA (inline, so call sites need not name it); at::vec
// does the same with at::vec::CPU_CAPABILITY.
#if defined(CPU_CAPABILITY)
#define ATTNZOO_ISA CPU_CAPABILITY
#else
#define ATTNZOO_ISA DEFAULT
#endif

// The AVX-512 copy needs GCC's `#pragma GCC target` on an AVX2 x86-64 build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 9 && defined(__AVX2__) && \
    defined(__FMA__)
#define ATTNZOO_HAVE_AVX512_KERNELS 1
#endif

namespace attnzoo::cpu {

enum class CpuIsa { kAVX2, kAVX512 };

// The ISA the dispatched kernels use, decided once per process: AVX-512 (F, BW, VL, DQ) when
// the kernels were built and the CPU (and OS) support it, else AVX2. The environment variable
// ATTNZOO_CPU_ISA=avx2 forces AVX2 (read once, at the first call).
CpuIsa runtime_isa();
const char* isa_name(CpuIsa isa);  // "avx512", "avx2" ("default" on non-AVX2 builds)

}  // namespace attnzoo::cpu
