/* CUDA backend: shared helpers (error macros, warp reductions, small device utilities).
 *
 * Error convention: library code never exits. cudaCheck / cublasCheck return
 * mk_fail(err, ...) from the enclosing int-returning function with the failing call's text, the
 * error string, file:line and the device ordinal. Kernel launchers (the *.cu files beside this)
 * return nothing; the caller checks cudaGetLastError() once after a group of launches.
 *
 * Every kernel family lives in a .cu/.cuh pair (ggml style): the .cuh declares host launchers
 * (C++ linkage, stream argument last), the .cu holds the kernels. The backend
 * (backend_cuda.cu) and the benchmark (tests/gpu/bench_decode.cu) call the same launchers.
 * MK_CUDA_EMU: the sources are being compiled for the CPU emulator of tests/gpu/emu/. */
#ifndef MK_CUDA_COMMON_CUH
#define MK_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "src/mk_error.h"
}

#define cudaCheck(err, dev, call)                                                              \
  do {                                                                                         \
    cudaError_t mk_e_ = (call);                                                                \
    if (mk_e_ != cudaSuccess)                                                                  \
      return mk_fail((err), "CUDA call %s failed: %s (%s:%d, device %d)", #call,               \
                     cudaGetErrorString(mk_e_), __FILE__, __LINE__, (dev));                    \
  } while (0)

#define cublasCheck(err, dev, call)                                                            \
  do {                                                                                         \
    cublasStatus_t mk_s_ = (call);                                                             \
    if (mk_s_ != CUBLAS_STATUS_SUCCESS)                                                        \
      return mk_fail((err), "cuBLAS call %s failed: %s (%s:%d, device %d)", #call,             \
                     cublasGetStatusString(mk_s_), __FILE__, __LINE__, (dev));                 \
  } while (0)

/* After a group of kernel launches: reports a bad launch configuration at once (and, on a
 * sticky error, an earlier asynchronous fault). */
#define cudaCheckLaunch(err, dev, what)                                                        \
  do {                                                                                         \
    cudaError_t mk_e_ = cudaGetLastError();                                                    \
    if (mk_e_ != cudaSuccess)                                                                  \
      return mk_fail((err), "CUDA kernel launch (%s) failed: %s (%s:%d, device %d)", (what),   \
                     cudaGetErrorString(mk_e_), __FILE__, __LINE__, (dev));                    \
  } while (0)

static inline int64_t mk_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#if defined(__CUDACC__) || defined(MK_CUDA_EMU)
static __device__ __forceinline__ float mk_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ __forceinline__ float mk_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Unpacks 8 bf16 held in a uint4 (16 bytes) to fp32. */
static __device__ __forceinline__ void mk_bf16x8_to_f32(uint4 u, float f[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

/* Two fp16 packed in a 32-bit word (low half first) to fp32. */
static __device__ __forceinline__ float2 mk_f16x2_to_f32(uint32_t w) {
  __half2_raw r;
  r.x = (unsigned short)(w & 0xffffu);
  r.y = (unsigned short)(w >> 16);
  return __half22float2(__half2(r));
}

/* Unpacks 8 fp16 held in a uint4 to fp32. */
static __device__ __forceinline__ void mk_f16x8_to_f32(uint4 u, float f[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 t = mk_f16x2_to_f32(w[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
#endif

#endif
