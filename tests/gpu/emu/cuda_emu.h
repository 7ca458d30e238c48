/* CPU emulator for the CUDA backend's kernels: lets the op-parity test run on a machine with no
 * GPU (tests/gpu/CMakeLists.txt builds test_cuda_emu_ops from the cuda/ sources with this).
 *
 * How: emu_transform.py rewrites each `kernel<<<grid, block, smem, stream>>>(args)` into
 * mk_emu_launch(grid, block, smem, stream, kernel, args); this header is force-included first and
 * turns the CUDA qualifiers into plain C++ (__shared__ -> static: blocks run one at a time), maps
 * threadIdx/blockIdx/... to the running emulated thread, and provides the device intrinsics the
 * kernels use. Every CUDA thread of a block is a coroutine with its own stack; __syncthreads,
 * __syncwarp and warp shuffles are barriers at which the scheduler switches threads
 * (cuda_emu.cpp), so shared memory, shuffles and barriers behave as on the device for code that
 * is free of data races. The CUDA runtime and cuBLAS calls are replaced by synchronous host
 * versions (device memory = host memory). Semantics only: it says nothing about speed, memory
 * coalescing or the hardware's own limits (registers, shared memory size, grid limits). */
#ifndef MK_CUDA_EMU_H
#define MK_CUDA_EMU_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef MK_CUDA_EMU
#define MK_CUDA_EMU 1
#endif

struct mk_emu_ctx {
  uint3 tid, bid;
  dim3 bdim, gdim;
};
extern mk_emu_ctx *mk_emu_cur;

#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim
#define threadIdx (mk_emu_cur->tid)
#define blockIdx (mk_emu_cur->bid)
#define blockDim (mk_emu_cur->bdim)
#define gridDim (mk_emu_cur->gdim)

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

void mk_emu_syncthreads(void);
void mk_emu_syncwarp(void);
uint64_t mk_emu_shfl_xor(uint64_t v, int lane_mask);
void mk_emu_run(dim3 grid, dim3 block, const std::function<void()> &body);

#define __syncthreads() mk_emu_syncthreads()
#define __syncwarp(...) mk_emu_syncwarp()

template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int o) {
  (void)mask;
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t raw = 0;
  memcpy(&raw, &v, sizeof(T));
  raw = mk_emu_shfl_xor(raw, o);
  T out;
  memcpy(&out, &raw, sizeof(T));
  return out;
}

static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
template <typename T> static inline T __ldcs(const T *p) { return *p; }
template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *p; }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { unsigned o = *p; *p += v; return o; }
static inline void __threadfence(void) {}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

template <typename... KArgs, typename... Args>
static inline void mk_emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*kernel)(KArgs...),
                                 Args &&...args) {
  (void)smem;
  (void)stream;
  std::tuple<typename std::decay<KArgs>::type...> params(std::forward<Args>(args)...);
  mk_emu_run(grid, block, [&]() { std::apply(kernel, params); });
}

#endif
