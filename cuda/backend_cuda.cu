/* CUDA backend: the op table of src/backend.h on one device, one stream (this file: memory,
 * weights, dense ops, lifetime, the staging helpers). The KV mirror and attention are in
 * backend_kv.cu, device MorphKV in backend_mkv.cu; backend_cuda.cuh says how they share state.
 *
 * Memory. Activations and weights are device memory (ops->alloc, cudaMalloc). Weights are
 * uploaded once in their file format and kept as blocks (dev_q, read by the decode GEMV of
 * gemv_quant.cuh), dequantized to bf16 (dev, for cuBLAS), or both: "weights mode" below.
 * mk_bweight_t.dev_bytes and mk_backend_cuda_resident say what is resident.
 *
 * The cache policy is not here: kvcache/driver.c runs it for every backend, and this backend
 * writes K/V, attends, produces score rows and (optionally) scores MorphKV on the device.
 *
 * Errors. The first failure is kept (sticky) and every op returns it: a failed launch or library
 * call at the op that made it, a fault seen only when the device runs at the next op that checks
 * (attention, upload, download, sync). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/backend_cuda.cuh"
#include "cuda/dequant.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/gemv_quant.cuh"
#include "cuda/matmul.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"

#define MK_WTMP_BYTES ((size_t)64 << 20)

static cuda_impl_t *impl_of(mk_backend_t *b) { return cb_impl(b); }

static void note_fail(cuda_impl_t *c, const char *what, cudaError_t e) {
  if (c->failed) return;
  c->failed = true;
  snprintf(c->msg, sizeof c->msg, "CUDA %s failed: %s (device %d)", what, cudaGetErrorString(e), c->dev);
}

static void note_msg(cuda_impl_t *c, const char *msg) {
  if (c->failed) return;
  c->failed = true;
  snprintf(c->msg, sizeof c->msg, "%.400s (device %d)", msg, c->dev);
}

static void check_launch(cuda_impl_t *c, const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) note_fail(c, what, e);
}

int cb_sticky(cuda_impl_t *c, mk_error_t *err) {
  return c->failed ? mk_fail(err, "cuda backend: %s", c->msg) : 0;
}

/* The end of an op: a failed launch is reported by the op that launched it. */
static int op_done(cuda_impl_t *c, const char *what, mk_error_t *err) {
  check_launch(c, what);
  return cb_sticky(c, err);
}

static int op_fail(cuda_impl_t *c, const char *msg, mk_error_t *err) {
  note_msg(c, msg);
  return cb_sticky(c, err);
}

/* Grow-only device buffer; waits for the stream before freeing the old one. */
int cb_dev_reserve(cuda_impl_t *c, void **p, size_t *cap, size_t bytes, mk_error_t *err) {
  if (bytes <= *cap) return 0;
  size_t want = bytes + bytes / 4 + 256;
  if (*p) {
    cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
    cudaCheck(err, c->dev, cudaFree(*p));
    *p = NULL;
    *cap = 0;
  }
  cudaCheck(err, c->dev, cudaMalloc(p, want));
  *cap = want;
  return 0;
}

/* Pinned staging region for `bytes`; the region's previous copy must have completed. */
unsigned char *cb_stage_begin(cuda_impl_t *c, size_t bytes, int *region, mk_error_t *err) {
  int r = c->stage_next;
  c->stage_next = (r + 1) % MK_STAGE_REGIONS;
  cudaError_t e = cudaEventSynchronize(c->stage_ev[r]);
  if (e != cudaSuccess) {
    mk_fail(err, "CUDA staging wait failed: %s (device %d)", cudaGetErrorString(e), c->dev);
    return NULL;
  }
  if (bytes > c->stage_cap[r]) {
    if (c->stage[r]) cudaFreeHost(c->stage[r]);
    c->stage[r] = NULL;
    c->stage_cap[r] = 0;
    size_t want = bytes + bytes / 4 + 4096;
    e = cudaMallocHost((void **)&c->stage[r], want);
    if (e != cudaSuccess) {
      mk_fail(err, "CUDA pinned staging of %zu bytes failed: %s (device %d)", want, cudaGetErrorString(e), c->dev);
      return NULL;
    }
    c->stage_cap[r] = want;
  }
  *region = r;
  return c->stage[r];
}

/* Copies `bytes` of region r to dst (device) on the stream, then marks the region busy. */
int cb_stage_end(cuda_impl_t *c, int r, void *dst, size_t bytes, mk_error_t *err) {
  if (bytes) cudaCheck(err, c->dev, cudaMemcpyAsync(dst, c->stage[r], bytes, cudaMemcpyHostToDevice, c->stream));
  cudaCheck(err, c->dev, cudaEventRecord(c->stage_ev[r], c->stream));
  return 0;
}

/* Uploads a small host array into the device argument buffer; returns its device address. */
static void *args_upload(cuda_impl_t *c, const void *src, size_t bytes, mk_error_t *err) {
  if (cb_dev_reserve(c, (void **)&c->args, &c->args_cap, bytes, err) != 0) return NULL;
  int r;
  unsigned char *h = cb_stage_begin(c, bytes, &r, err);
  if (!h) return NULL;
  memcpy(h, src, bytes);
  if (cb_stage_end(c, r, c->args, bytes, err) != 0) return NULL;
  return c->args;
}

float *cb_host_scratch(cuda_impl_t *c, size_t floats) {
  if (floats > c->hbuf_cap) {
    free(c->hbuf);
    c->hbuf = (float *)malloc(sizeof(float) * floats);
    c->hbuf_cap = c->hbuf ? floats : 0;
  }
  return c->hbuf;
}

/* ---- memory ops ------------------------------------------------------------------------- */

static void *cuda_alloc(mk_backend_t *b, size_t bytes) {
  cuda_impl_t *c = impl_of(b);
  cudaSetDevice(c->dev);
  void *p = NULL;
  if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) {
    cudaGetLastError();
    return NULL;
  }
  if (cudaMemsetAsync(p, 0, bytes ? bytes : 16, c->stream) != cudaSuccess) {
    cudaFree(p);
    return NULL;
  }
  return p;
}

static void cuda_dealloc(mk_backend_t *b, void *p) {
  cuda_impl_t *c = impl_of(b);
  if (!p) return;
  cudaSetDevice(c->dev);
  cudaStreamSynchronize(c->stream);
  cudaFree(p);
}

static int cuda_upload(mk_backend_t *b, void *dst, const void *src, size_t bytes, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (cb_sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cudaCheck(err, c->dev, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  return 0;
}

static int cuda_download(mk_backend_t *b, void *dst, const void *src, size_t bytes, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (cb_sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cudaCheck(err, c->dev, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  return cb_mirror_apply_all(c, err);
}

static int cuda_sync(mk_backend_t *b, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cudaError_t e = cudaStreamSynchronize(c->stream);
  if (e != cudaSuccess) note_fail(c, "stream synchronize", e);
  if (cb_sticky(c, err)) return -1;
  return cb_mirror_apply_all(c, err);
}

/* Device-to-device rows, async on the stream (collective payload packing). */
static int cuda_copy2d(mk_backend_t *b, void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                       size_t height, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (cb_sticky(c, err)) return -1;
  if (!width || !height) return 0;
  cudaCheck(err, c->dev, cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDeviceToDevice,
                                           c->stream));
  return 0;
}

/* Pinned host memory (the MPI communicator stages device buffers through it). */
static void *cuda_host_alloc(mk_backend_t *b, size_t bytes) {
  void *p = NULL;
  if (cudaMallocHost(&p, bytes ? bytes : 16) != cudaSuccess) {
    cudaGetLastError();
    return NULL;
  }
  return p;
}

static void cuda_host_free(mk_backend_t *b, void *p) {
  if (p) cudaFreeHost(p);
}

/* ---- weights ------------------------------------------------------------------------------ */

/* Which copies weight_prepare keeps (MORPHKV_CUDA_WEIGHTS, read at each call; docs/cuda.md):
 *   quant (default)  Q4_0, Q4_1, Q8_0, Q4_K, Q6_K stay in file format on the device: decode
 *                    (n <= MK_GEMV_MAX_N) reads the blocks (gemv_quant.cuh), larger batches
 *                    dequantize bf16 tiles of MK_WTMP_BYTES and run cuBLAS on them; other types bf16
 *   bf16             every weight dequantized to bf16 at load
 *   both             both copies: blocks for decode, the resident bf16 copy for larger batches */
enum { MK_CUDA_WTYPE_BF16 = 1, MK_CUDA_WTYPE_QUANT = 2 }; /* bits of mk_bweight_t.dev_type */
enum { MK_WEIGHTS_QUANT = 0, MK_WEIGHTS_BF16, MK_WEIGHTS_BOTH };

static int weights_mode(void) {
  const char *m = getenv("MORPHKV_CUDA_WEIGHTS");
  if (m && strcmp(m, "bf16") == 0) return MK_WEIGHTS_BF16;
  if (m && strcmp(m, "both") == 0) return MK_WEIGHTS_BOTH;
  return MK_WEIGHTS_QUANT;
}

/* Bytes of one row of w's blocks on the device. A column slice of a tensor-parallel rank has host
 * rows longer than its cols (row_bytes is the file's row): uploads pack the slice's blocks. */
static size_t dev_row_bytes(const mk_qmat_t *w) {
  return (size_t)(w->cols / mk_dq_block_elems((int)w->type)) * (size_t)mk_dq_block_bytes((int)w->type);
}

/* (rows, cols) bf16 copy of w, dequantized on the device chunk by chunk. */
static int upload_bf16(cuda_impl_t *c, const mk_qmat_t *w, int64_t bpr, __nv_bfloat16 **out, mk_error_t *err) {
  __nv_bfloat16 *dst = NULL;
  cudaCheck(err, c->dev, cudaMalloc((void **)&dst, (size_t)w->rows * w->cols * sizeof(__nv_bfloat16)));
  if (!c->wtmp) {
    cudaError_t e = cudaMalloc(&c->wtmp, MK_WTMP_BYTES);
    if (e != cudaSuccess) {
      cudaFree(dst);
      return mk_fail(err, "CUDA call cudaMalloc(weight upload buffer) failed: %s (device %d)", cudaGetErrorString(e), c->dev);
    }
  }
  const size_t packed = dev_row_bytes(w);
  int64_t rows_per = (int64_t)(MK_WTMP_BYTES / packed);
  if (rows_per < 1) { /* one row larger than the chunk */
    cudaFree(dst);
    return mk_fail(err, "cuda backend: weight row of %zu bytes exceeds the upload chunk", packed);
  }
  for (int64_t r0 = 0; r0 < w->rows; r0 += rows_per) {
    int64_t nr = w->rows - r0 < rows_per ? w->rows - r0 : rows_per;
    cudaError_t e = cudaMemcpy2DAsync(c->wtmp, packed, (const char *)w->data + (size_t)r0 * w->row_bytes,
                                      w->row_bytes, packed, (size_t)nr, cudaMemcpyHostToDevice, c->stream);
    if (e == cudaSuccess) {
      mk_cuda_dequant_bf16((int)w->type, c->wtmp, nr * bpr, dst + (size_t)r0 * w->cols, c->stream);
      e = cudaGetLastError();
    }
    /* the next chunk overwrites wtmp: stream order makes that safe; sync to surface errors */
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
      cudaFree(dst);
      return mk_fail(err, "cuda backend: uploading a %s weight (%lld x %lld) failed: %s (device %d)",
                     mk_type_name(w->type), (long long)w->rows, (long long)w->cols, cudaGetErrorString(e), c->dev);
    }
  }
  *out = dst;
  return 0;
}

/* The file-format blocks of w, copied to the device as they are (rows packed, dev_row_bytes). */
static int upload_quant(cuda_impl_t *c, const mk_qmat_t *w, void **out, mk_error_t *err) {
  const size_t packed = dev_row_bytes(w), bytes = (size_t)w->rows * packed;
  void *dst = NULL;
  cudaCheck(err, c->dev, cudaMalloc(&dst, bytes));
  cudaError_t e = cudaMemcpy2DAsync(dst, packed, w->data, w->row_bytes, packed, (size_t)w->rows,
                                    cudaMemcpyHostToDevice, c->stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
  if (e != cudaSuccess) {
    cudaFree(dst);
    return mk_fail(err, "cuda backend: uploading a %s weight (%lld x %lld) failed: %s (device %d)", mk_type_name(w->type),
                   (long long)w->rows, (long long)w->cols, cudaGetErrorString(e), c->dev);
  }
  *out = dst;
  return 0;
}

static void cuda_weight_release(mk_backend_t *b, mk_bweight_t *w);

static int cuda_weight_prepare(mk_backend_t *b, const mk_qmat_t *w, mk_bweight_t *out, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  memset(out, 0, sizeof *out);
  out->host = *w;
  if (cb_sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  const int be = mk_dq_block_elems((int)w->type), bb = mk_dq_block_bytes((int)w->type);
  if (be == 0)
    return mk_fail(err, "cuda backend: weight type %s (%d) has no device dequantizer", mk_type_name(w->type),
                   (int)w->type);
  if (w->rows <= 0 || w->cols <= 0 || w->cols % be != 0)
    return mk_fail(err, "cuda backend: weight of %lld x %lld is not whole %s blocks", (long long)w->rows,
                   (long long)w->cols, mk_type_name(w->type));
  const int64_t bpr = w->cols / be;
  if (w->row_bytes < (size_t)(bpr * bb))
    return mk_fail(err, "cuda backend: %s rows of %zu bytes, shorter than %lld", mk_type_name(w->type), w->row_bytes,
                   (long long)(bpr * bb));
  const int mode = weights_mode();
  const bool q = mode != MK_WEIGHTS_BF16 && mk_cuda_gemv_quant_supported((int)w->type);
  const bool bf = mode != MK_WEIGHTS_QUANT || !q;
  if (q) {
    if (upload_quant(c, w, &out->dev_q, err) != 0) return -1;
    out->dev_type |= MK_CUDA_WTYPE_QUANT;
    out->dev_bytes += (size_t)w->rows * dev_row_bytes(w);
    c->resident_q += (size_t)w->rows * dev_row_bytes(w);
  }
  if (bf) {
    __nv_bfloat16 *dst = NULL;
    if (upload_bf16(c, w, bpr, &dst, err) != 0) {
      cuda_weight_release(b, out);
      return -1;
    }
    out->dev = dst;
    out->dev_type |= MK_CUDA_WTYPE_BF16;
    out->dev_bytes += (size_t)w->rows * w->cols * sizeof(__nv_bfloat16);
    c->resident_bf16 += (size_t)w->rows * w->cols * sizeof(__nv_bfloat16);
  }
  return 0;
}

static void cuda_weight_release(mk_backend_t *b, mk_bweight_t *w) {
  cuda_impl_t *c = impl_of(b);
  if (w->dev || w->dev_q) {
    cudaSetDevice(c->dev);
    cudaStreamSynchronize(c->stream);
  }
  if (w->dev) {
    cudaFree(w->dev);
    c->resident_bf16 -= (size_t)w->host.rows * w->host.cols * sizeof(__nv_bfloat16);
  }
  if (w->dev_q) {
    cudaFree(w->dev_q);
    c->resident_q -= (size_t)w->host.rows * dev_row_bytes(&w->host);
  }
  w->dev = w->dev_q = NULL;
  w->dev_type = 0;
  w->dev_bytes = 0;
}

extern "C" void mk_backend_cuda_resident(mk_backend_t *b, size_t *quant_bytes, size_t *bf16_bytes) {
  cuda_impl_t *c = impl_of(b);
  *quant_bytes = c ? c->resident_q : 0;
  *bf16_bytes = c ? c->resident_bf16 : 0;
}

/* ---- dense ops ---------------------------------------------------------------------------- */

static int cuda_embed(mk_backend_t *b, const mk_bweight_t *table, const int32_t *ids, int n, float *x,
                      mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || n <= 0) return cb_sticky(c, err);
  if (!table->dev && !table->dev_q) return op_fail(c, "embed: the table was not prepared for this backend", err);
  for (int i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= table->host.rows) return op_fail(c, "embed: token id out of range", err);
  mk_error_t e;
  const int32_t *dids = (const int32_t *)args_upload(c, ids, sizeof(int32_t) * (size_t)n, &e);
  if (!dids) return op_fail(c, e.msg, err);
  if (table->dev)
    mk_cuda_embed((const __nv_bfloat16 *)table->dev, table->host.cols, dids, n, x, c->stream);
  else
    mk_cuda_embed_quant((int)table->host.type, table->dev_q, dev_row_bytes(&table->host), table->host.cols, dids, n, x,
                        c->stream);
  return op_done(c, "embed", err);
}

static void note_cublas(cuda_impl_t *c, cublasStatus_t s, int64_t rows, int64_t cols, int n) {
  if (s == CUBLAS_STATUS_SUCCESS || c->failed) return;
  c->failed = true;
  snprintf(c->msg, sizeof c->msg, "cublasGemmEx (%lld x %lld, n %d) failed: %s (device %d)", (long long)rows,
           (long long)cols, n, cublasGetStatusString(s), c->dev);
}

/* y = xb W^T for a weight held only in file format: bf16 tiles of rows dequantized in turn. */
static void matmul_tiles(cuda_impl_t *c, const mk_bweight_t *w, int n, float *y) {
  const int64_t rows = w->host.rows, cols = w->host.cols, bpr = cols / mk_dq_block_elems((int)w->host.type);
  int64_t tile = (int64_t)(MK_WTMP_BYTES / (sizeof(__nv_bfloat16) * (size_t)cols));
  if (tile < 1) tile = 1;
  if (tile > rows) tile = rows;
  mk_error_t e;
  if (cb_dev_reserve(c, (void **)&c->wtile, &c->wtile_cap, sizeof(__nv_bfloat16) * (size_t)tile * cols, &e) != 0)
    return note_msg(c, e.msg);
  for (int64_t r0 = 0; r0 < rows && !c->failed; r0 += tile) {
    const int64_t nr = rows - r0 < tile ? rows - r0 : tile;
    mk_cuda_dequant_bf16((int)w->host.type, (const char *)w->dev_q + (size_t)r0 * dev_row_bytes(&w->host), nr * bpr, c->wtile,
                         c->stream);
    check_launch(c, "dequant tile");
    note_cublas(c, mk_cuda_gemm_bf16_tile(c->cublas, c->wtile, nr, cols, c->xb, n, y + r0, rows), nr, cols, n);
  }
}

static int cuda_matmul(mk_backend_t *b, const mk_bweight_t *w, const float *x, int n, float *y, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || n <= 0) return cb_sticky(c, err);
  if (!w->dev && !w->dev_q) return op_fail(c, "matmul: the weight was not prepared for this backend", err);
  const __nv_bfloat16 *W = (const __nv_bfloat16 *)w->dev;
  const int64_t rows = w->host.rows, cols = w->host.cols;
  if (n <= MK_GEMV_MAX_N && w->dev_q) {
    mk_cuda_gemv_quant((int)w->host.type, w->dev_q, rows, cols, dev_row_bytes(&w->host), x, n, y, c->stream);
    return op_done(c, "gemv_quant", err);
  }
  if (n <= MK_GEMV_MAX_N) {
    mk_cuda_gemv_bf16(W, rows, cols, x, n, y, c->stream);
    return op_done(c, "gemv", err);
  }
  mk_error_t e;
  if (cb_dev_reserve(c, (void **)&c->xb, &c->xb_cap, sizeof(__nv_bfloat16) * (size_t)n * cols, &e) != 0)
    return op_fail(c, e.msg, err);
  mk_cuda_f32_to_bf16(x, c->xb, (size_t)n * cols, c->stream);
  check_launch(c, "f32_to_bf16");
  if (W)
    note_cublas(c, mk_cuda_gemm_bf16(c->cublas, W, rows, cols, c->xb, n, y), rows, cols, n);
  else
    matmul_tiles(c, w, n, y);
  return cb_sticky(c, err);
}

/* Deterministic numerics (src/backend.h): the chunk partials by the fixed-order warp kernel, then
 * their left-to-right sum. Same chunk order as the CPU, not the same bits (bf16 weights, fp32
 * activations; README "Numerics"). */
static int cuda_matmul_chunks(mk_backend_t *b, const mk_bweight_t *w, const float *x, int n, int chunk_cols,
                              float *parts, float *y, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || n <= 0) return cb_sticky(c, err);
  if (!w->dev && !w->dev_q) return op_fail(c, "matmul_chunks: the weight was not prepared for this backend", err);
  if (!w->dev) {
    /* Quantized-only device weights (MORPHKV_CUDA_WEIGHTS=quant, the default): the chunk kernel
     * reads bf16. One rank needs only the sum: the block GEMV gives it, without the fixed chunk
     * order. Partials for other ranks cannot be made from blocks yet. */
    if (!parts) return cuda_matmul(b, w, x, n, y, err);
    return op_fail(c, "matmul_chunks: deterministic numerics over several ranks need bf16 device weights "
                      "(MORPHKV_CUDA_WEIGHTS=bf16 or both), or run with --deterministic off", err);
  }
  const int64_t rows = w->host.rows, cols = w->host.cols, nc = (cols + chunk_cols - 1) / chunk_cols;
  float *dst = parts;
  if (!dst) {
    mk_error_t e;
    if (cb_dev_reserve(c, (void **)&c->mm_part, &c->mm_part_cap, sizeof(float) * (size_t)(nc * n * rows), &e) != 0)
      return op_fail(c, e.msg, err);
    dst = c->mm_part;
  }
  mk_cuda_gemv_chunks_bf16((const __nv_bfloat16 *)w->dev, rows, cols, chunk_cols, x, n, dst, c->stream);
  check_launch(c, "matmul_chunks");
  if (!parts) mk_cuda_sum_parts(y, dst, NULL, (int)nc, (size_t)n * rows, c->stream);
  return op_done(c, "matmul_chunks", err);
}

static int cuda_sum_parts(mk_backend_t *b, float *y, const float *parts, const int *idx, int n_idx, size_t n,
                          mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return cb_sticky(c, err);
  mk_error_t e;
  const int *didx = (const int *)args_upload(c, idx, sizeof(int) * (size_t)n_idx, &e);
  if (!didx) return op_fail(c, e.msg, err);
  mk_cuda_sum_parts(y, parts, didx, n_idx, n, c->stream);
  return op_done(c, "sum_parts", err);
}

static int cuda_rmsnorm(mk_backend_t *b, float *y, const float *x, const float *w, int n, int dim, float eps,
                        mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return cb_sticky(c, err);
  mk_cuda_rmsnorm(y, x, w, n, dim, eps, c->stream);
  return op_done(c, "rmsnorm", err);
}

static int cuda_add_bias(mk_backend_t *b, float *y, const float *bias, int n, int dim, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return cb_sticky(c, err);
  mk_cuda_add_bias(y, bias, n, dim, c->stream);
  return op_done(c, "add_bias", err);
}

static int cuda_rope(mk_backend_t *b, const mk_rope_params_t *p, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || p->n_tok <= 0) return cb_sticky(c, err);
  mk_error_t e;
  const int32_t *dpos = (const int32_t *)args_upload(c, p->pos, sizeof(int32_t) * (size_t)p->n_tok, &e);
  if (!dpos) return op_fail(c, e.msg, err);
  mk_cuda_rope(p->x, dpos, p->n_tok, p->n_head, p->head_dim, p->rope_dim, p->theta, p->neox, p->freq_factors,
               c->stream);
  return op_done(c, "rope", err);
}

static int cuda_swiglu(mk_backend_t *b, float *y, const float *gate, const float *up, size_t n, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return cb_sticky(c, err);
  mk_cuda_swiglu(y, gate, up, n, c->stream);
  return op_done(c, "swiglu", err);
}

static int cuda_add(mk_backend_t *b, float *y, const float *x, size_t n, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return cb_sticky(c, err);
  mk_cuda_add(y, x, n, c->stream);
  return op_done(c, "add", err);
}

static int cuda_group_qsum(mk_backend_t *b, float *qsum, const float *q, int n_tok, int n_q, int n_kv, int d,
                           const int *q_to_kv, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || n_tok <= 0) return cb_sticky(c, err);
  mk_error_t e;
  const int *dmap = (const int *)args_upload(c, q_to_kv, sizeof(int) * (size_t)n_q, &e);
  if (!dmap) return op_fail(c, e.msg, err);
  mk_cuda_group_qsum(qsum, q, n_tok, n_q, n_kv, d, dmap, c->stream);
  return op_done(c, "group_qsum", err);
}

/* ---- lifetime ----------------------------------------------------------------------------- */

static void cuda_free(mk_backend_t *b) {
  cuda_impl_t *c = impl_of(b);
  if (!c) return;
  cudaSetDevice(c->dev);
  if (c->stream) cudaStreamSynchronize(c->stream);
  for (int i = 0; i < c->n_mir; i++) cb_mirror_free(c->mir[i]);
  free(c->mir);
  for (int r = 0; r < MK_STAGE_REGIONS; r++) {
    if (c->stage[r]) cudaFreeHost(c->stage[r]);
    if (c->stage_ev[r]) cudaEventDestroy(c->stage_ev[r]);
  }
  cudaFree(c->args);
  cudaFree(c->xb);
  cudaFree(c->part);
  cudaFree(c->mm_part);
  cudaFree(c->qsum);
  cudaFree(c->wtmp);
  cudaFree(c->wtile);
  free(c->hbuf);
  if (c->cublas) cublasDestroy(c->cublas);
  if (c->stream) cudaStreamDestroy(c->stream);
  free(c);
  b->impl = NULL;
}

static mk_backend_ops_t cuda_ops_make(void) {
  mk_backend_ops_t o;
  memset(&o, 0, sizeof o);
  o.name = "cuda";
  o.free = cuda_free;
  o.alloc = cuda_alloc;
  o.dealloc = cuda_dealloc;
  o.upload = cuda_upload;
  o.download = cuda_download;
  o.weight_prepare = cuda_weight_prepare;
  o.weight_release = cuda_weight_release;
  o.embed = cuda_embed;
  o.matmul = cuda_matmul;
  o.matmul_chunks = cuda_matmul_chunks;
  o.sum_parts = cuda_sum_parts;
  o.rmsnorm = cuda_rmsnorm;
  o.add_bias = cuda_add_bias;
  o.rope = cuda_rope;
  o.swiglu = cuda_swiglu;
  o.add = cuda_add;
  o.group_qsum = cuda_group_qsum;
  o.kv_write = cb_kv_write;
  o.attention = cb_attention;
  o.kv_pos_changed = cb_kv_pos_changed;
  o.mkv_begin = cb_mkv_begin;
  o.mkv_select = cb_mkv_select;
  o.sync = cuda_sync;
  o.copy2d = cuda_copy2d;
  o.host_alloc = cuda_host_alloc;
  o.host_free = cuda_host_free;
  return o;
}

static const mk_backend_ops_t cuda_ops = cuda_ops_make();

extern "C" int mk_backend_cuda_init(mk_backend_t *b, const mk_backend_params_t *p, mk_error_t *err) {
  memset(b, 0, sizeof *b);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  const char *vis = getenv("CUDA_VISIBLE_DEVICES");
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return mk_fail(err, "no CUDA device (%s; CUDA_VISIBLE_DEVICES=%s)",
                   e != cudaSuccess ? cudaGetErrorString(e) : "0 devices", vis ? vis : "unset");
  }
  if (p->device >= count)
    return mk_fail(err, "CUDA device %d requested, but %d device%s visible (CUDA_VISIBLE_DEVICES=%s)", p->device,
                   count, count == 1 ? " is" : "s are", vis ? vis : "unset");
  cuda_impl_t *c = (cuda_impl_t *)calloc(1, sizeof *c);
  if (!c) return mk_fail(err, "cuda backend: out of memory");
  /* device < 0: by node-local rank, ranks beyond the devices sharing them round-robin */
  c->dev = p->device >= 0 ? p->device : (p->local_rank > 0 ? p->local_rank : 0) % count;
  b->impl = c;
  b->ops = &cuda_ops;
  b->n_threads = p->n_threads;
#define MK_INIT_CHECK(call)                                                                         \
  do {                                                                                              \
    cudaError_t ie_ = (call);                                                                       \
    if (ie_ != cudaSuccess) {                                                                       \
      mk_fail(err, "CUDA call %s failed: %s (%s:%d, device %d)", #call, cudaGetErrorString(ie_),    \
              __FILE__, __LINE__, c->dev);                                                          \
      cuda_free(b);                                                                                 \
      b->ops = NULL;                                                                                \
      return -1;                                                                                    \
    }                                                                                               \
  } while (0)
  MK_INIT_CHECK(cudaSetDevice(c->dev));
  MK_INIT_CHECK(cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, c->dev));
  MK_INIT_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  MK_INIT_CHECK(cudaDeviceGetPCIBusId(b->comm.device_id, (int)sizeof b->comm.device_id, c->dev));
  b->comm.device_memory = true;
  b->comm.stream = (void *)c->stream;
  b->comm.device = c->dev;
  for (int r = 0; r < MK_STAGE_REGIONS; r++)
    MK_INIT_CHECK(cudaEventCreateWithFlags(&c->stage_ev[r], cudaEventDisableTiming));
#undef MK_INIT_CHECK
  cublasStatus_t s = cublasCreate(&c->cublas);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(c->cublas, c->stream);
  if (s != CUBLAS_STATUS_SUCCESS) {
    mk_fail(err, "cuBLAS init failed: %s (device %d)", cublasGetStatusString(s), c->dev);
    cuda_free(b);
    b->ops = NULL;
    return -1;
  }
  return 0;
}
