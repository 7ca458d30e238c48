/* RMSNorm: y(n, dim) = x / sqrt(mean(x^2) + eps) * w(dim). One block per row; the sum of
 * squares and the scale in double precision, as in the CPU reference. */
#ifndef MK_CUDA_NORM_CUH
#define MK_CUDA_NORM_CUH

#include "cuda/common.cuh"

void mk_cuda_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps,
                     cudaStream_t stream);

#endif
