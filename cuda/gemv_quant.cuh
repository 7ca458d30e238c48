/* Batch-1 decode GEMV on file-format weights: y(n, rows) = x(n, cols) W^T with W kept on the
 * device in its GGUF block format (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K), x and y fp32, n <= MK_GEMV_MAX_N.
 *
 * fp32 activations times blocks dequantized in registers (not 8-bit activations as the CPU
 * kernels): a batch-1 decode step is bound by the weight bytes, which are the same either way;
 * dequantizing in registers costs ALU time the memory-bound kernel has spare, needs no
 * activation-quantization pass (one launch and one round trip less per matmul), and adds no
 * error of its own, so the result is the exact product of the dequantized weights up to fp32
 * summation order, closer to fp64 than the CPU's (which rounds x to 8 bits). dp4a on 8-bit
 * activations would only pay off where the kernel is compute bound (batches beyond a few rows),
 * where cuBLAS on bf16 takes over.
 *
 * Layout: one warp per weight row, MK_QGEMV_WARPS rows per block. Lane l takes the 32-element
 * sub-blocks l, l + 32, ... of the row (a Q4_0/Q4_1/Q8_0 block is one sub-block, a K-type super
 * block eight), decodes its 32 weights with the formulas of dequant.cuh (same fp32 operations,
 * so the same values as the bf16 path's fp32 intermediate), multiplies by x, and the warp sums
 * the lanes in a fixed butterfly: deterministic. Block bytes are read as bytes (a row's blocks
 * are not aligned). Untuned: it has never run on a GPU (docs/cuda.md).
 *
 * Prefill and larger batches: cuBLAS on bf16 tiles of the weight dequantized on the fly
 * (mk_cuda_gemm_bf16_tile), or a resident bf16 copy (backend weights mode, backend_cuda.cu). */
#ifndef MK_CUDA_GEMV_QUANT_CUH
#define MK_CUDA_GEMV_QUANT_CUH

#include "cuda/common.cuh"

#define MK_QGEMV_WARPS 4

/* true for the types mk_cuda_gemv_quant reads. */
bool mk_cuda_gemv_quant_supported(int type);

/* y(n, rows) = x(n, cols) W^T, W (rows, row_bytes) in file format, n <= MK_GEMV_MAX_N,
 * cols a multiple of the type's block elements. */
void mk_cuda_gemv_quant(int type, const void *W, int64_t rows, int64_t cols, size_t row_bytes, const float *x,
                        int n, float *y, cudaStream_t stream);

/* x(n, cols) = rows ids[] of W (file format, any type of dequant.cuh), exact fp32 values. */
void mk_cuda_embed_quant(int type, const void *W, size_t row_bytes, int64_t cols, const int32_t *ids, int n,
                         float *x, cudaStream_t stream);

/* y[:, r0 .. r0 + tile_rows) (y is (n, ldy)) = xb(n, cols) Wt^T with Wt the (tile_rows, cols)
 * bf16 tile of rows r0.. (the caller passes y + r0), through cublasGemmEx. */
cublasStatus_t mk_cuda_gemm_bf16_tile(cublasHandle_t h, const __nv_bfloat16 *Wt, int64_t tile_rows, int64_t cols,
                                      const __nv_bfloat16 *xb, int n, float *y, int64_t ldy);

#endif
