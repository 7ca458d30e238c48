/* GEMV and GEMM for bf16 weights; see matmul.cuh for when each runs.
 *
 * GEMV layout: a block of 256 threads owns MK_GEMV_ROWS weight rows; its threads stride over the
 * row in 16-byte chunks (8 bf16), so one block streams MK_GEMV_ROWS x cols x 2 bytes with every
 * load coalesced, and all chunks of a thread are independent loads the compiler can keep in
 * flight. Partial sums are reduced per warp by shuffles, then across the 8 warps in shared
 * memory. Weights are read with __ldcs (streamed, evict-first) so that x stays in L1. */
#include "cuda/matmul.cuh"

#define MK_GEMV_THREADS 256
#define MK_GEMV_ROWS 2

template <int NT>
__global__ __launch_bounds__(MK_GEMV_THREADS) void mk_gemv_bf16_vec_kernel(
    const uint4 *W /* (rows, cols/8) */, int64_t rows, int64_t n8, const float *x /* (NT, cols) */,
    float *y /* (NT, rows) */) {
  const int64_t r0 = (int64_t)blockIdx.x * MK_GEMV_ROWS;
  const int64_t cols = n8 * 8;
  float acc[MK_GEMV_ROWS][NT];
#pragma unroll
  for (int r = 0; r < MK_GEMV_ROWS; r++)
#pragma unroll
    for (int t = 0; t < NT; t++) acc[r][t] = 0.f;

#pragma unroll 2
  for (int64_t c = threadIdx.x; c < n8; c += MK_GEMV_THREADS) {
    uint4 w[MK_GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < MK_GEMV_ROWS; r++)
      w[r] = (r0 + r < rows) ? __ldcs(W + (r0 + r) * n8 + c) : make_uint4(0, 0, 0, 0);
    float xv[NT][8];
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const float4 *xp = reinterpret_cast<const float4 *>(x + t * cols + c * 8);
      float4 a = __ldg(xp), b = __ldg(xp + 1);
      xv[t][0] = a.x; xv[t][1] = a.y; xv[t][2] = a.z; xv[t][3] = a.w;
      xv[t][4] = b.x; xv[t][5] = b.y; xv[t][6] = b.z; xv[t][7] = b.w;
    }
#pragma unroll
    for (int r = 0; r < MK_GEMV_ROWS; r++) {
      float wf[8];
      mk_bf16x8_to_f32(w[r], wf);
#pragma unroll
      for (int t = 0; t < NT; t++)
#pragma unroll
        for (int i = 0; i < 8; i++) acc[r][t] = fmaf(wf[i], xv[t][i], acc[r][t]);
    }
  }

  __shared__ float red[MK_GEMV_THREADS / 32][MK_GEMV_ROWS * NT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < MK_GEMV_ROWS; r++)
#pragma unroll
    for (int t = 0; t < NT; t++) {
      float v = mk_warp_sum(acc[r][t]);
      if (lane == 0) red[warp][r * NT + t] = v;
    }
  __syncthreads();
  if (threadIdx.x < MK_GEMV_ROWS * NT) {
    const int r = threadIdx.x / NT, t = threadIdx.x % NT;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < MK_GEMV_THREADS / 32; w++) s += red[w][threadIdx.x];
    if (r0 + r < rows) y[t * rows + r0 + r] = s;
  }
}

/* Any shape and alignment: one warp per (row, token). */
__global__ void mk_gemv_bf16_scalar_kernel(const __nv_bfloat16 *W, int64_t rows, int64_t cols,
                                           const float *x, float *y) {
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int t = blockIdx.y, lane = threadIdx.x & 31;
  if (r >= rows) return;
  const __nv_bfloat16 *w = W + r * cols;
  const float *xt = x + t * cols;
  float s = 0.f;
  for (int64_t c = lane; c < cols; c += 32) s = fmaf(__bfloat162float(w[c]), xt[c], s);
  s = mk_warp_sum(s);
  if (lane == 0) y[t * rows + r] = s;
}

void mk_cuda_gemv_bf16(const __nv_bfloat16 *W, int64_t rows, int64_t cols, const float *x, int n,
                       float *y, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return;
  const bool vec = cols % 8 == 0 && ((uintptr_t)W & 15) == 0 && ((uintptr_t)x & 15) == 0 &&
                   n <= MK_GEMV_MAX_N;
  if (!vec) {
    dim3 grid((unsigned)mk_ceil_div(rows, 8), (unsigned)n);
    mk_gemv_bf16_scalar_kernel<<<grid, 256, 0, stream>>>(W, rows, cols, x, y);
    return;
  }
  const unsigned blocks = (unsigned)mk_ceil_div(rows, MK_GEMV_ROWS);
  const uint4 *W4 = reinterpret_cast<const uint4 *>(W);
  const int64_t n8 = cols / 8;
  switch (n) {
    case 1: mk_gemv_bf16_vec_kernel<1><<<blocks, MK_GEMV_THREADS, 0, stream>>>(W4, rows, n8, x, y); break;
    case 2: mk_gemv_bf16_vec_kernel<2><<<blocks, MK_GEMV_THREADS, 0, stream>>>(W4, rows, n8, x, y); break;
    case 3: mk_gemv_bf16_vec_kernel<3><<<blocks, MK_GEMV_THREADS, 0, stream>>>(W4, rows, n8, x, y); break;
    default: mk_gemv_bf16_vec_kernel<4><<<blocks, MK_GEMV_THREADS, 0, stream>>>(W4, rows, n8, x, y); break;
  }
}

__global__ void mk_f32_to_bf16_kernel(const float *src, __nv_bfloat16 *dst, size_t count) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) dst[i] = __float2bfloat16_rn(src[i]);
}

void mk_cuda_f32_to_bf16(const float *src, __nv_bfloat16 *dst, size_t count, cudaStream_t stream) {
  if (count == 0) return;
  mk_f32_to_bf16_kernel<<<(unsigned)mk_ceil_div((int64_t)count, 256), 256, 0, stream>>>(src, dst, count);
}

cublasStatus_t mk_cuda_gemm_bf16(cublasHandle_t h, const __nv_bfloat16 *W, int64_t rows, int64_t cols,
                                 const __nv_bfloat16 *xb, int n, float *y) {
  /* Column-major view: W row-major (rows, cols) is A = W^T (cols x rows, ld cols); x is
   * (cols x n, ld cols); y is (rows x n, ld rows). y = op(A) x with op = transpose. */
  const float alpha = 1.f, beta = 0.f;
  return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n, (int)cols, &alpha, W, CUDA_R_16BF,
                      (int)cols, xb, CUDA_R_16BF, (int)cols, &beta, y, CUDA_R_32F, (int)rows,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

__global__ void mk_gemv_chunks_kernel(const __nv_bfloat16 *W, int64_t rows, int64_t cols, int64_t chunk,
                                      const float *x, int n, float *parts) {
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int64_t c = blockIdx.y;
  const int t = blockIdx.z, lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t c0 = c * chunk, c1 = c0 + chunk < cols ? c0 + chunk : cols;
  const __nv_bfloat16 *w = W + r * cols;
  const float *xt = x + (int64_t)t * cols;
  float s = 0.f;
  for (int64_t k = c0 + lane; k < c1; k += 32) s = fmaf(__bfloat162float(w[k]), xt[k], s);
  s = mk_warp_sum(s);
  if (lane == 0) parts[((size_t)c * n + t) * rows + r] = s;
}

void mk_cuda_gemv_chunks_bf16(const __nv_bfloat16 *W, int64_t rows, int64_t cols, int64_t chunk,
                              const float *x, int n, float *parts, cudaStream_t stream) {
  if (rows <= 0 || n <= 0 || chunk <= 0) return;
  dim3 grid((unsigned)mk_ceil_div(rows, 8), (unsigned)mk_ceil_div(cols, chunk), (unsigned)n);
  mk_gemv_chunks_kernel<<<grid, 256, 0, stream>>>(W, rows, cols, chunk, x, n, parts);
}

__global__ void mk_sum_parts_kernel(float *y, const float *parts, const int *idx, int n_idx, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float s = parts[(size_t)(idx ? idx[0] : 0) * n + i];
  for (int j = 1; j < n_idx; j++) s += parts[(size_t)(idx ? idx[j] : j) * n + i];
  y[i] = s;
}

void mk_cuda_sum_parts(float *y, const float *parts, const int *idx, int n_idx, size_t n, cudaStream_t stream) {
  if (n == 0 || n_idx <= 0) return;
  mk_sum_parts_kernel<<<(unsigned)mk_ceil_div((int64_t)n, 256), 256, 0, stream>>>(y, parts, idx, n_idx, n);
}
