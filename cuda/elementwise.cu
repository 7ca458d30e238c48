/* Element-wise kernels (see elementwise.cuh). Grid-stride loops: any size, 256 threads. */
#include "cuda/elementwise.cuh"

static unsigned mk_ew_blocks(size_t n) {
  size_t b = (n + 255) / 256;
  return (unsigned)(b > 65535u * 16u ? 65535u * 16u : (b ? b : 1));
}

__global__ void mk_add_kernel(float *y, const float *x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] += x[i];
}

void mk_cuda_add(float *y, const float *x, size_t n, cudaStream_t stream) {
  if (n) mk_add_kernel<<<mk_ew_blocks(n), 256, 0, stream>>>(y, x, n);
}

__global__ void mk_add_bias_kernel(float *y, const float *bias, size_t n, int dim) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] += bias[i % dim];
}

void mk_cuda_add_bias(float *y, const float *bias, int n, int dim, cudaStream_t stream) {
  size_t total = (size_t)n * dim;
  if (total) mk_add_bias_kernel<<<mk_ew_blocks(total), 256, 0, stream>>>(y, bias, total, dim);
}

__global__ void mk_swiglu_kernel(float *y, const float *gate, const float *up, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float g = gate[i];
    y[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

void mk_cuda_swiglu(float *y, const float *gate, const float *up, size_t n, cudaStream_t stream) {
  if (n) mk_swiglu_kernel<<<mk_ew_blocks(n), 256, 0, stream>>>(y, gate, up, n);
}

__global__ void mk_embed_kernel(const __nv_bfloat16 *table, int64_t cols, const int32_t *ids, float *x) {
  const int t = blockIdx.y;
  const __nv_bfloat16 *row = table + (int64_t)ids[t] * cols;
  for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (int64_t)gridDim.x * blockDim.x)
    x[t * cols + c] = __bfloat162float(row[c]);
}

void mk_cuda_embed(const __nv_bfloat16 *table, int64_t cols, const int32_t *ids, int n, float *x,
                   cudaStream_t stream) {
  if (n <= 0 || cols <= 0) return;
  dim3 grid((unsigned)mk_ceil_div(cols, 256), (unsigned)n);
  mk_embed_kernel<<<grid, 256, 0, stream>>>(table, cols, ids, x);
}

__global__ void mk_group_qsum_kernel(float *qsum, const float *q, int n_q, int n_kv, int d,
                                     const int *q_to_kv) {
  const int kv = blockIdx.x, t = blockIdx.y;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float s = 0.f;
    for (int h = 0; h < n_q; h++)
      if (q_to_kv[h] == kv) s += q[((size_t)t * n_q + h) * d + i];
    qsum[((size_t)t * n_kv + kv) * d + i] = s;
  }
}

void mk_cuda_group_qsum(float *qsum, const float *q, int n_tok, int n_q, int n_kv, int d,
                        const int *q_to_kv, cudaStream_t stream) {
  if (n_tok <= 0 || n_kv <= 0) return;
  dim3 grid((unsigned)n_kv, (unsigned)n_tok);
  mk_group_qsum_kernel<<<grid, d < 256 ? ((d + 31) / 32) * 32 : 256, 0, stream>>>(qsum, q, n_q, n_kv, d, q_to_kv);
}
