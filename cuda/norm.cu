/* RMSNorm kernel (see norm.cuh). y may alias x: each row is read completely (the sum) before
 * any element of it is written. */
#include "cuda/norm.cuh"

#define MK_NORM_THREADS 256

__global__ __launch_bounds__(MK_NORM_THREADS) void mk_rmsnorm_kernel(float *y, const float *x,
                                                                     const float *w, int dim, float eps) {
  const float *xr = x + (size_t)blockIdx.x * dim;
  float *yr = y + (size_t)blockIdx.x * dim;
  double ss = 0.0; /* double, like the CPU reference: the scale is then exact to fp32 */
  for (int i = threadIdx.x; i < dim; i += MK_NORM_THREADS) ss += (double)xr[i] * xr[i];
  __shared__ double red[MK_NORM_THREADS / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  double tot = 0.0;
#pragma unroll
  for (int i = 0; i < MK_NORM_THREADS / 32; i++) tot += red[i];
  const float scale = (float)(1.0 / sqrt(tot / dim + (double)eps));
  for (int i = threadIdx.x; i < dim; i += MK_NORM_THREADS) yr[i] = xr[i] * scale * w[i];
}

void mk_cuda_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps,
                     cudaStream_t stream) {
  if (n > 0 && dim > 0) mk_rmsnorm_kernel<<<(unsigned)n, MK_NORM_THREADS, 0, stream>>>(y, x, w, dim, eps);
}
