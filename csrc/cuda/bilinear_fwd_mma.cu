// Tensor-core forward of the bilinear family for float16 / bfloat16 (sm_80+):
// flash-attention-2 style. A block of 4 warps owns 64 queries (16 per warp, Q fragments in
// registers); key tiles of 64 keys (K and V) are staged in shared memory; S = Q K^T and
// O += P V run on mma.sync.m16n8k16 with float32 accumulation; the pooling policy
// (pooling.cuh: the online softmax, and hard pooling's arg-max, first index on ties) runs on the
// accumulator fragments.
// Key tiles outside every row's valid range (causal / window / valid_lens) are skipped;
// element checks are skipped for tiles inside every row's range when there is no mask.
// Supported: D == Dv in {64, 128}, the poolings that read scores (soft, hard); bilinear_fwd
// falls back to the generic kernel otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "common/validate.h"
#include "cuda/common.cuh"
#include "cuda/ops_cuda.h"
#include "cuda/pooling.cuh"

namespace attnzoo {
namespace cuda {
namespace {

constexpr int kMmaThreads = 128;  // 4 warps
constexpr int kBQ = 64;           // queries per block
constexpr int kBK = 64;           // keys per tile

struct MmaFwdParams {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  const uint16_t* kb;  // (B, Nk) or nullptr
  float scale;
  int64_t Nq, Nk;
  MaskParams mp;
  uint16_t* out;
  float* lse;
  int64_t* argmax;     // poolings with an arg-max
  uint16_t* soft_out;  // poolings with a soft_out
};

template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (BF16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

template <bool BF16>
__device__ __forceinline__ float to_float(uint16_t x) {
  if constexpr (BF16) {
    return __bfloat162float(__ushort_as_bfloat16(x));
  } else {
    return __half2float(__ushort_as_half(x));
  }
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
#endif
}

// The outputs of row h of a warp's fragment (see pooling.cuh): lane (g, tig) holds the columns
// nt * 8 + 2 tig, + 1 of o[nt][2 h], o[nt][2 h + 1].
template <bool BF16, int HD>
struct MmaRowSink {
  static constexpr int OT = HD / 8;
  const MmaFwdParams& p;
  const float (&o)[OT][4];
  const uint16_t* V;  // the batch's values
  int64_t b, row;
  int h, tig;

  __device__ __forceinline__ uint16_t* dst(OutSlot slot) const {
    return (slot == kOut ? p.out : p.soft_out) + (b * p.Nq + row) * HD;
  }
  __device__ __forceinline__ void acc(OutSlot slot, float scale) {
    uint16_t* d = dst(slot);
#pragma unroll
    for (int nt = 0; nt < OT; ++nt) {
      const int col = nt * 8 + 2 * tig;
      *reinterpret_cast<uint32_t*>(d + col) = pack2<BF16>(o[nt][2 * h] * scale, o[nt][2 * h + 1] * scale);
    }
  }
  __device__ __forceinline__ void value(OutSlot slot, int64_t key, float fill) {
    uint16_t* d = dst(slot);
#pragma unroll
    for (int nt = 0; nt < OT; ++nt) {
      const int col = nt * 8 + 2 * tig;
      *reinterpret_cast<uint32_t*>(d + col) =
          key >= 0 ? *reinterpret_cast<const uint32_t*>(V + key * HD + col) : pack2<BF16>(fill, fill);
    }
  }
  __device__ __forceinline__ void lse(float x) {
    if (tig == 0) p.lse[b * p.Nq + row] = x;
  }
  __device__ __forceinline__ void argmax(int64_t j) {
    if (tig == 0) p.argmax[b * p.Nq + row] = j;
  }
};

template <bool BF16, int HD, class Pool>
__global__ void __launch_bounds__(kMmaThreads) mma_fwd_kernel(const MmaFwdParams p) {
  static_assert(Pool::kTraits.scan_passes == 0, "multi-pass poolings: not in the tensor-core forward yet");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int LD = HD + 8;  // smem row pitch in elements: 16-byte aligned, staggers banks
  constexpr int NT = kBK / 8;  // n-tiles of S
  constexpr int OT = HD / 8;   // n-tiles of O
  __shared__ __align__(16) uint16_t sK[kBK * LD];
  __shared__ __align__(16) uint16_t sV[kBK * LD];
  __shared__ RowRanges<kBQ> ranges;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int64_t Nq = p.Nq, Nk = p.Nk;
  const int64_t nQT = ceil_div(Nq, kBQ);
  const int64_t b = blockIdx.x / nQT, q0 = (blockIdx.x % nQT) * kBQ;
  const MaskParams& mp = p.mp;
  const uint16_t* Q = p.q + b * Nq * HD;
  const uint16_t* K = p.k + b * Nk * HD;
  const uint16_t* V = p.v + b * Nk * HD;
  const uint16_t* KB = p.kb ? p.kb + b * Nk : nullptr;

  int64_t row[2];
  KeyRange kr[2];
  const bool* mrow[2];
  const float* brow[2];  // positional terms (params.h)
  const float slope = alibi_slope<float>(mp, b);
  const bool positions = has_positions(mp);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row[h] = q0 + warp * 16 + g + 8 * h;
    kr[h] = query_row(mp, b, row[h], mrow[h]);
    brow[h] = row[h] < Nq ? bias_row<float>(mp, b, row[h]) : nullptr;
    if (tig == 0) {
      ranges.lo[warp * 16 + g + 8 * h] = kr[h].lo;
      ranges.hi[warp * 16 + g + 8 * h] = kr[h].hi;
    }
  }
  __syncthreads();
  const KeySpan span = key_span<kBQ>(ranges.lo, ranges.hi, Nk);

  // Q fragments (A operand, row-major 16 x 16 per k-step).
  uint32_t qf[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e & 1, col = kk * 16 + 2 * tig + 8 * (e >> 1);
      qf[kk][e] = row[h] < Nq ? *reinterpret_cast<const uint32_t*>(Q + row[h] * HD + col) : 0u;
    }
  }

  float o[OT][4];
#pragma unroll
  for (int nt = 0; nt < OT; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
  Pool pool[2];  // rows g and g + 8 of the warp's 16
  pool[0].init();
  pool[1].init();

  for (int64_t j0 = (span.lo / kBK) * kBK; j0 < span.hi; j0 += kBK) {
    __syncthreads();  // the previous tile's readers are done with sK / sV
    for (int idx = tid; idx < kBK * HD / 8; idx += kMmaThreads) {
      const int rr = idx / (HD / 8), cc = (idx % (HD / 8)) * 8;
      const int64_t key = j0 + rr;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key < Nk) {
        kv = *reinterpret_cast<const uint4*>(K + key * HD + cc);
        vv = *reinterpret_cast<const uint4*>(V + key * HD + cc);
      }
      *reinterpret_cast<uint4*>(sK + rr * LD + cc) = kv;
      *reinterpret_cast<uint4*>(sV + rr * LD + cc) = vv;
    }
    __syncthreads();

    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint16_t* kp = sK + (nt * 8 + g) * LD + kk * 16 + 2 * tig;
        mma16816<BF16>(s[nt], qf[kk], *reinterpret_cast<const uint32_t*>(kp),
                       *reinterpret_cast<const uint32_t*>(kp + 8));
      }
    }

    const bool full = mp.mask == nullptr && j0 >= span.all_lo && j0 + kBK <= span.all_hi;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        const int64_t j = j0 + nt * 8 + 2 * tig + (e & 1);
        const bool ok = full || (j >= kr[h].lo && j < kr[h].hi && mask_ok(mp, mrow[h], j));
        float x = s[nt][e] * p.scale + (KB ? to_float<BF16>(KB[j]) : 0.f);
        if (positions) x = with_positions<float>(mp, x, brow[h], slope, row[h], j);
        s[nt][e] = ok ? x : -INFINITY;
      }
    }
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h)  // row h's entries: n = 2 nt + c at s[nt][2 h + c], key j0 + 8 nt + 2 tig + c
      alpha[h] = pool[h].template weigh<2 * NT>([&](int n) -> float& { return s[n >> 1][2 * h + (n & 1)]; },
                                                [&](int n) { return j0 + (n >> 1) * 8 + 2 * tig + (n & 1); },
                                                QuadLanes{});
#pragma unroll
    for (int nt = 0; nt < OT; ++nt) {
      o[nt][0] *= alpha[0];
      o[nt][1] *= alpha[0];
      o[nt][2] *= alpha[1];
      o[nt][3] *= alpha[1];
    }
    // O += P V: the S accumulators of n-tiles (2kk, 2kk+1) are the A fragment of k-step kk.
    const int mat = lane >> 3, rin = lane & 7;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      const uint32_t a[4] = {pack2<BF16>(s[2 * kk][0], s[2 * kk][1]), pack2<BF16>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<BF16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<BF16>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int np = 0; np < HD / 16; ++np) {
        uint32_t b00, b01, b10, b11;
        ldmatrix_x4_trans(b00, b01, b10, b11, sV + (kk * 16 + (mat & 1) * 8 + rin) * LD + np * 16 + (mat >> 1) * 8);
        mma16816<BF16>(o[2 * np], a, b00, b01);
        mma16816<BF16>(o[2 * np + 1], a, b10, b11);
      }
    }
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (row[h] >= Nq) continue;
    MmaRowSink<BF16, HD> sink{p, o, V, b, row[h], h, tig};
    pool[h].finish(sink);
  }
#else
  __trap();  // compiled for an architecture without m16n8k16: never launched (tensor_core_image)
#endif
}

// Whether the current device (dev) runs an image of the tensor-core kernel compiled for sm_80+.
// The device's compute capability is not enough: a build without an sm_80+ image (e.g.
// TORCH_CUDA_ARCH_LIST="7.5+PTX") compiles the kernel body for compute_75 as the __trap() above,
// and an A100 / H100 JIT-compiles that PTX and traps. The kernel's attributes name the PTX
// version of the image the device loaded; every instantiation lives in this translation unit's
// fatbinary, so one of them speaks for all. Cached per device.
bool tensor_core_image(int dev) {
  static std::mutex mu;
  static std::vector<int8_t> known;  // per device: -1 not asked yet, 0 no, 1 yes
  std::lock_guard<std::mutex> lock(mu);
  if (dev >= static_cast<int>(known.size())) known.resize(dev + 1, -1);
  if (known[dev] < 0) {
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, mma_fwd_kernel<false, 64, SoftmaxPool<float>>));
    known[dev] = attr.ptxVersion >= 80 ? 1 : 0;
  }
  return known[dev] == 1;
}

template <bool BF16, int HD>
void launch(const MmaFwdParams& p, int64_t B) {
  const int64_t blocks = B * ceil_div(p.Nq, kBQ);
  TORCH_CHECK(blocks < (int64_t(1) << 31), "attnzoo: problem too large for the CUDA grid");
  dispatch_pooling(p.mp.pooling, [&](auto P) {
    using Pool = typename CudaPooling<decltype(P)::value, float>::type;
    if constexpr (Pool::kTraits.scores) {  // (bilinear_fwd_mma declines the others)
      mma_fwd_kernel<BF16, HD, Pool>
          <<<static_cast<unsigned>(blocks), kMmaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

bool bilinear_fwd_mma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_bias,
                      double scale, const MaskParams& mp, Tensor4& result) {
  const int64_t pooling = mp.pooling;
  const auto dt = q.scalar_type();
  if (dt != at::kHalf && dt != at::kBFloat16) return false;
  const int64_t B = q.size(0), Nq = q.size(1), D = q.size(2), Nk = k.size(1), Dv = v.size(2);
  // (a pooling that reads no scores gains nothing from the tensor cores)
  if (D != Dv || (D != 64 && D != 128) || !pooling_traits(pooling).scores || B * Nq == 0) return false;
  // 16-byte vector loads: a contiguous view with a storage offset may be misaligned.
  for (const at::Tensor* t : {&q, &k, &v})
    if (reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 != 0) return false;
  if (std::getenv("ATTNZOO_CUDA_NO_MMA")) return false;  // debugging / A-B comparisons
  if (!tensor_core_image(q.get_device())) return false;   // (the caller's guard made it current)

  result = empty_fwd_outputs(q, Dv, pooling, dt);
  const auto& out = std::get<0>(result);
  const auto& lse = std::get<1>(result);
  const auto& argmax = std::get<2>(result);
  const auto& soft_out = std::get<3>(result);

  MmaFwdParams p{};
  p.q = reinterpret_cast<const uint16_t*>(q.const_data_ptr());
  p.k = reinterpret_cast<const uint16_t*>(k.const_data_ptr());
  p.v = reinterpret_cast<const uint16_t*>(v.const_data_ptr());
  p.kb = key_bias.has_value() ? reinterpret_cast<const uint16_t*>(key_bias->const_data_ptr()) : nullptr;
  p.scale = static_cast<float>(scale);
  p.Nq = Nq;
  p.Nk = Nk;
  p.mp = mp;
  p.out = reinterpret_cast<uint16_t*>(out.mutable_data_ptr());
  p.lse = lse.mutable_data_ptr<float>();
  p.argmax = argmax.numel() ? argmax.mutable_data_ptr<int64_t>() : nullptr;
  p.soft_out = soft_out.numel() ? reinterpret_cast<uint16_t*>(soft_out.mutable_data_ptr()) : nullptr;
  const bool bf16 = dt == at::kBFloat16;
  if (bf16 && D == 64) launch<true, 64>(p, B);
  if (bf16 && D == 128) launch<true, 128>(p, B);
  if (!bf16 && D == 64) launch<false, 64>(p, B);
  if (!bf16 && D == 128) launch<false, 128>(p, B);
  return true;
}

}  // namespace cuda
}  // namespace attnzoo
