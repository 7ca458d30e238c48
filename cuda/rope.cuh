/* Rotary position embedding, in place on x(n_tok, n_head, head_dim).
 * Pair i (i < rope_dim/2) is (2i, 2i+1), or (i, i + rope_dim/2) with neox; its angle is
 * pos * theta^(-2i/rope_dim) / freq_factors[i] (freq_factors NULL: 1). The angle is computed in
 * double precision (positions up to 10^5 and more would lose ~1e-2 rad in fp32) and rounded to
 * fp32 only as cos/sin. Dims >= rope_dim are left as they are. */
#ifndef MK_CUDA_ROPE_CUH
#define MK_CUDA_ROPE_CUH

#include "cuda/common.cuh"

void mk_cuda_rope(float *x, const int32_t *pos /* (n_tok), device */, int n_tok, int n_head,
                  int head_dim, int rope_dim, float theta, bool neox,
                  const float *freq_factors /* (rope_dim/2), device, or NULL */, cudaStream_t stream);

#endif
