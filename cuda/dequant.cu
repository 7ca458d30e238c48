/* Load-time dequantization kernel: one thread per block (32 or 256 elements, or one element
 * for F32/F16/BF16). Runs once per weight at load, so it favours simplicity over bandwidth. */
#include "cuda/dequant.cuh"

#include "cuda/common.cuh"

__global__ void mk_dequant_bf16_kernel(int t, const uint8_t *src, int64_t n_blocks,
                                       __nv_bfloat16 *dst /* (n_blocks * block_elems) */) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n_blocks) return;
  const int be = mk_dq_block_elems(t), bb = mk_dq_block_bytes(t);
  float y[256];
  mk_dq_block(t, src + i * bb, y);
  __nv_bfloat16 *o = dst + i * be;
  for (int j = 0; j < be; j++) o[j] = __float2bfloat16_rn(y[j]);
}

void mk_cuda_dequant_bf16(int type, const void *src, int64_t n_blocks, __nv_bfloat16 *dst,
                          cudaStream_t stream) {
  if (n_blocks <= 0) return;
  const int threads = 128;
  mk_dequant_bf16_kernel<<<(unsigned)mk_ceil_div(n_blocks, threads), threads, 0, stream>>>(
      type, (const uint8_t *)src, n_blocks, dst);
}
