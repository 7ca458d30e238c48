/* Element-wise and gather kernels: residual add, bias, SwiGLU, embedding rows, group query sum.
 * fp32 throughout, one thread per element; the same formulas as the CPU backend. */
#ifndef MK_CUDA_ELEMENTWISE_CUH
#define MK_CUDA_ELEMENTWISE_CUH

#include "cuda/common.cuh"

/* y[i] += x[i], i < n */
void mk_cuda_add(float *y, const float *x, size_t n, cudaStream_t stream);
/* y(n, dim) += bias(dim) */
void mk_cuda_add_bias(float *y, const float *bias, int n, int dim, cudaStream_t stream);
/* y[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up */
void mk_cuda_swiglu(float *y, const float *gate, const float *up, size_t n, cudaStream_t stream);
/* x(n, cols) = rows ids[] (device, each in [0, rows)) of the bf16 table (rows, cols) */
void mk_cuda_embed(const __nv_bfloat16 *table, int64_t cols, const int32_t *ids, int n, float *x,
                   cudaStream_t stream);
/* qsum(n_tok, n_kv, d) = sum over h with q_to_kv[h] == kv of q(n_tok, n_q, d)[., h, .];
 * q_to_kv (n_q) on the device; heads summed in increasing h. */
void mk_cuda_group_qsum(float *qsum, const float *q, int n_tok, int n_q, int n_kv, int d,
                        const int *q_to_kv, cudaStream_t stream);

#endif
