/* Decode GEMV on file-format weight blocks (gemv_quant.cuh says why fp32 x dequantized blocks). */
#include "cuda/dequant.cuh"
#include "cuda/gemv_quant.cuh"
#include "cuda/matmul.cuh"

/* The 32 weights of sub-block s (0 .. block elems / 32) of the block at b, with the fp32
 * operations of mk_dq_block (dequant.cuh), so that every weight has the same value. */
template <int T>
static __device__ __forceinline__ void mk_qg_sub32(const uint8_t *b, int s, float w[32]) {
  if (T == MK_DQ_Q4_0) {
    const float d = mk_dq_f16(mk_dq_u16(b));
    const uint8_t *qs = b + MK_DQ_OFF(mk_block_q4_0, qs);
#pragma unroll
    for (int j = 0; j < 16; j++) {
      w[j] = (float)((qs[j] & 0xF) - 8) * d;
      w[j + 16] = (float)((qs[j] >> 4) - 8) * d;
    }
  } else if (T == MK_DQ_Q4_1) {
    const float d = mk_dq_f16(mk_dq_u16(b)), m = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q4_1, m)));
    const uint8_t *qs = b + MK_DQ_OFF(mk_block_q4_1, qs);
#pragma unroll
    for (int j = 0; j < 16; j++) {
      w[j] = (float)(qs[j] & 0xF) * d + m;
      w[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
  } else if (T == MK_DQ_Q8_0) {
    const float d = mk_dq_f16(mk_dq_u16(b));
    const int8_t *qs = (const int8_t *)(b + MK_DQ_OFF(mk_block_q8_0, qs));
#pragma unroll
    for (int j = 0; j < 32; j++) w[j] = (float)qs[j] * d;
  } else if (T == MK_DQ_Q4_K) { /* sub-block s: chunk s/2 of 64, low nibbles for even s */
    const float d = mk_dq_f16(mk_dq_u16(b)), dmin = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q4_k, dmin)));
    uint8_t sc, mn;
    mk_q4k_scale_min(b + MK_DQ_OFF(mk_block_q4_k, scales), s, &sc, &mn);
    const float d1 = d * (float)sc, o1 = dmin * (float)mn;
    const uint8_t *q = b + MK_DQ_OFF(mk_block_q4_k, qs) + 32 * (s >> 1);
    const int shift = 4 * (s & 1);
#pragma unroll
    for (int l = 0; l < 32; l++) w[l] = d1 * (float)((q[l] >> shift) & 0xF) - o1;
  } else { /* Q6_K, sub-block s = 4h + k: elements 128h + 32k + l */
    const int h = s >> 2, k = s & 3;
    const uint8_t *ql = b + MK_DQ_OFF(mk_block_q6_k, ql) + 64 * h + 32 * (k & 1);
    const uint8_t *qh = b + MK_DQ_OFF(mk_block_q6_k, qh) + 32 * h;
    const int8_t *sc = (const int8_t *)(b + MK_DQ_OFF(mk_block_q6_k, scales)) + 8 * h + 2 * k;
    const float d = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q6_k, d)));
    const int lshift = 4 * (k >> 1), hshift = 2 * k;
#pragma unroll
    for (int l = 0; l < 32; l++) {
      const int q = (int)(((ql[l] >> lshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4)) - 32;
      w[l] = d * (float)sc[l / 16] * (float)q;
    }
  }
}

template <int T, int NT>
__global__ void mk_gemv_q_kernel(const uint8_t *W, int64_t rows, int64_t cols, size_t row_bytes, const float *x,
                                 float *y) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * MK_QGEMV_WARPS + (threadIdx.x >> 5);
  if (r >= rows) return; /* whole warps */
  const int be = mk_dq_block_elems(T), bb = mk_dq_block_bytes(T), subs = be / 32;
  const uint8_t *row = W + r * row_bytes;
  const int64_t n_sub = cols / 32;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.f;
  for (int64_t sb = lane; sb < n_sub; sb += 32) {
    float w[32];
    mk_qg_sub32<T>(row + (sb / subs) * bb, (int)(sb % subs), w);
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const float *xs = x + t * cols + sb * 32;
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < 32; j++) s += w[j] * xs[j];
      acc[t] += s;
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
    const float v = mk_warp_sum(acc[t]);
    if (lane == 0) y[t * rows + r] = v;
  }
}

bool mk_cuda_gemv_quant_supported(int type) {
  return type == MK_DQ_Q4_0 || type == MK_DQ_Q4_1 || type == MK_DQ_Q8_0 || type == MK_DQ_Q4_K || type == MK_DQ_Q6_K;
}

template <int T>
static void mk_gemv_q_launch(const uint8_t *W, int64_t rows, int64_t cols, size_t row_bytes, const float *x, int n,
                             float *y, cudaStream_t stream) {
  const unsigned blocks = (unsigned)mk_ceil_div(rows, MK_QGEMV_WARPS);
  const unsigned threads = 32 * MK_QGEMV_WARPS;
  switch (n) {
    case 1: mk_gemv_q_kernel<T, 1><<<blocks, threads, 0, stream>>>(W, rows, cols, row_bytes, x, y); break;
    case 2: mk_gemv_q_kernel<T, 2><<<blocks, threads, 0, stream>>>(W, rows, cols, row_bytes, x, y); break;
    case 3: mk_gemv_q_kernel<T, 3><<<blocks, threads, 0, stream>>>(W, rows, cols, row_bytes, x, y); break;
    default: mk_gemv_q_kernel<T, 4><<<blocks, threads, 0, stream>>>(W, rows, cols, row_bytes, x, y); break;
  }
}

void mk_cuda_gemv_quant(int type, const void *W, int64_t rows, int64_t cols, size_t row_bytes, const float *x,
                        int n, float *y, cudaStream_t stream) {
  if (rows <= 0 || n <= 0 || n > MK_GEMV_MAX_N) return;
  const uint8_t *w = (const uint8_t *)W;
  switch (type) {
    case MK_DQ_Q4_0: mk_gemv_q_launch<MK_DQ_Q4_0>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case MK_DQ_Q4_1: mk_gemv_q_launch<MK_DQ_Q4_1>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case MK_DQ_Q8_0: mk_gemv_q_launch<MK_DQ_Q8_0>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case MK_DQ_Q4_K: mk_gemv_q_launch<MK_DQ_Q4_K>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case MK_DQ_Q6_K: mk_gemv_q_launch<MK_DQ_Q6_K>(w, rows, cols, row_bytes, x, n, y, stream); break;
    default: break;
  }
}

cublasStatus_t mk_cuda_gemm_bf16_tile(cublasHandle_t h, const __nv_bfloat16 *Wt, int64_t tile_rows, int64_t cols,
                                      const __nv_bfloat16 *xb, int n, float *y, int64_t ldy) {
  /* column-major: A = Wt^T (cols x tile_rows, ld cols), B = x (cols x n), C = y (tile_rows x n, ld ldy) */
  const float alpha = 1.f, beta = 0.f;
  return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)tile_rows, n, (int)cols, &alpha, Wt, CUDA_R_16BF, (int)cols,
                      xb, CUDA_R_16BF, (int)cols, &beta, y, CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT);
}

__global__ void mk_embed_q_kernel(int type, const uint8_t *W, size_t row_bytes, int64_t cols, const int32_t *ids,
                                  float *x) {
  const int i = blockIdx.y, be = mk_dq_block_elems(type), bb = mk_dq_block_bytes(type);
  const int64_t nb = cols / be;
  for (int64_t blk = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; blk < nb; blk += (int64_t)gridDim.x * blockDim.x) {
    float y[256];
    mk_dq_block(type, W + (size_t)ids[i] * row_bytes + (size_t)blk * bb, y);
    for (int j = 0; j < be; j++) x[(size_t)i * cols + (size_t)blk * be + j] = y[j];
  }
}

void mk_cuda_embed_quant(int type, const void *W, size_t row_bytes, int64_t cols, const int32_t *ids, int n,
                         float *x, cudaStream_t stream) {
  const int be = mk_dq_block_elems(type);
  if (n <= 0 || be == 0) return;
  int64_t gx = mk_ceil_div(cols / be, 128);
  if (gx > 64) gx = 64;
  mk_embed_q_kernel<<<dim3((unsigned)gx, (unsigned)n), 128, 0, stream>>>(type, (const uint8_t *)W, row_bytes, cols,
                                                                       ids, x);
}
