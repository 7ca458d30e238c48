/* Projections y(n, rows) = x(n, cols) W^T with W (rows, cols) bf16 on the device, x and y fp32.
 *
 * Two paths, chosen by the backend from n:
 *   n <= MK_GEMV_MAX_N  own GEMV: reads each weight row once with 16-byte streaming loads, x from
 *                       L1/L2 in fp32, fp32 accumulate. Batch-1 decode is bound by the weight
 *                       bytes; this path needs no activation conversion and no cuBLAS heuristics.
 *   larger n            cuBLAS GEMM (bf16 A/B, fp32 C, fp32 compute, tensor cores) after a
 *                       small kernel converts x to bf16. */
#ifndef MK_CUDA_MATMUL_CUH
#define MK_CUDA_MATMUL_CUH

#include "cuda/common.cuh"

#define MK_GEMV_MAX_N 4

/* y(n, rows) = x(n, cols) W^T, n <= MK_GEMV_MAX_N. Any alignment; fast when cols % 8 == 0 and
 * W, x are 16-byte aligned. */
void mk_cuda_gemv_bf16(const __nv_bfloat16 *W /* (rows, cols) */, int64_t rows, int64_t cols,
                       const float *x /* (n, cols) */, int n, float *y /* (n, rows) */,
                       cudaStream_t stream);

/* dst[i] = bf16(src[i]) (round to nearest even), i < count. */
void mk_cuda_f32_to_bf16(const float *src, __nv_bfloat16 *dst, size_t count, cudaStream_t stream);

/* y(n, rows) = xb(n, cols) W^T through cublasGemmEx (the handle carries the stream). */
cublasStatus_t mk_cuda_gemm_bf16(cublasHandle_t h, const __nv_bfloat16 *W /* (rows, cols) */,
                                 int64_t rows, int64_t cols, const __nv_bfloat16 *xb /* (n, cols) */,
                                 int n, float *y /* (n, rows) */);

/* Chunked product for the deterministic numerics (src/quant.c): parts(n_chunks, n, rows) = the
 * partial over columns [c*chunk, min((c+1)*chunk, cols)) of every row and token, one warp per
 * (row, chunk, token) with a fixed lane order and shuffle tree, so a partial depends only on the
 * row's and the token's data (not on n, rows or the launch). */
void mk_cuda_gemv_chunks_bf16(const __nv_bfloat16 *W /* (rows, cols) */, int64_t rows, int64_t cols,
                              int64_t chunk, const float *x /* (n, cols) */, int n, float *parts,
                              cudaStream_t stream);

/* y[i] = parts[idx[0]*n + i] + parts[idx[1]*n + i] + ... left to right (idx NULL: 0, 1, ...). */
void mk_cuda_sum_parts(float *y, const float *parts, const int *idx /* device or NULL */, int n_idx, size_t n,
                       cudaStream_t stream);

#endif
