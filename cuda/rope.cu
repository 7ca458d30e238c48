/* RoPE kernel (see rope.cuh): one block per (token, head), one thread per rotated pair. */
#include "cuda/rope.cuh"

__global__ void mk_rope_kernel(float *x, const int32_t *pos, int n_head, int head_dim, int rope_dim,
                               float theta, bool neox, const float *ff) {
  const int h = blockIdx.x, t = blockIdx.y, half = rope_dim / 2;
  float *v = x + ((size_t)t * n_head + h) * head_dim;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double freq = pow((double)theta, -2.0 * (double)i / (double)rope_dim);
    if (ff) freq /= (double)ff[i];
    double s, c;
    sincos((double)pos[t] * freq, &s, &c);
    const float cs = (float)c, sn = (float)s;
    const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * cs - x1 * sn;
    v[b] = x0 * sn + x1 * cs;
  }
}

void mk_cuda_rope(float *x, const int32_t *pos, int n_tok, int n_head, int head_dim, int rope_dim,
                  float theta, bool neox, const float *freq_factors, cudaStream_t stream) {
  if (n_tok <= 0 || n_head <= 0 || rope_dim < 2) return;
  dim3 grid((unsigned)n_head, (unsigned)n_tok);
  int threads = rope_dim / 2 < 128 ? ((rope_dim / 2 + 31) / 32) * 32 : 128;
  mk_rope_kernel<<<grid, threads, 0, stream>>>(x, pos, n_head, head_dim, rope_dim, theta, neox, freq_factors);
}
