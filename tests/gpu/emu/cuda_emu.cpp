/* CPU emulator runtime (see cuda_emu.h): the block scheduler with one coroutine per CUDA thread,
 * and synchronous host versions of the CUDA runtime and cuBLAS calls the backend makes.
 *
 * Scheduler. A block's threads run one at a time, each until it reaches a barrier
 * (__syncthreads, __syncwarp, or either half of a shuffle) or returns. When no thread can run:
 * a warp whose live lanes all wait at a warp barrier is released; otherwise, if every live thread
 * of the block waits at __syncthreads, all are released; anything else is a deadlock (a barrier
 * reached by only part of a warp or block: a kernel bug), reported with the thread states.
 * Coroutines switch with a 7-instruction x86-64 stack swap (no signal-mask system calls). */
#include "tests/gpu/emu/cuda_emu.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

mk_emu_ctx *mk_emu_cur;

enum { EMU_READY = 0, EMU_AT_BLOCK, EMU_AT_WARP, EMU_DONE };

typedef struct emu_thread {
  void *sp;
  int state;
  unsigned shfl; /* shuffles done: picks the exchange buffer */
  mk_emu_ctx ctx;
} emu_thread_t;

#define EMU_STACK (96 * 1024)
#define EMU_MAX_THREADS 1024

static emu_thread_t g_th[EMU_MAX_THREADS];
static char *g_stacks;
static int g_n, g_cur;
static void *g_sched_sp;
static const std::function<void()> *g_body;
static uint64_t g_slots[2][EMU_MAX_THREADS];

extern "C" void mk_emu_switch(void **save_sp, void *to_sp);
__asm__(
    ".text\n"
    ".globl mk_emu_switch\n"
    ".type mk_emu_switch,@function\n"
    "mk_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size mk_emu_switch,.-mk_emu_switch\n"
    ".section .note.GNU-stack,\"\",@progbits\n"
    ".text\n");

static void yield_to_scheduler(void) { mk_emu_switch(&g_th[g_cur].sp, g_sched_sp); }

static void thread_entry(void) {
  (*g_body)();
  g_th[g_cur].state = EMU_DONE;
  yield_to_scheduler();
  abort(); /* a finished thread is never resumed */
}

static void *stack_init(char *stack) {
  uintptr_t top = ((uintptr_t)(stack + EMU_STACK)) & ~(uintptr_t)15;
  void **sp = (void **)top;
  *--sp = NULL;                   /* alignment slot: thread_entry starts as if called */
  *--sp = (void *)thread_entry;   /* popped by ret */
  for (int i = 0; i < 6; i++) *--sp = NULL; /* rbp rbx r12 r13 r14 r15 */
  return sp;
}

void mk_emu_syncthreads(void) {
  g_th[g_cur].state = EMU_AT_BLOCK;
  yield_to_scheduler();
}

void mk_emu_syncwarp(void) {
  g_th[g_cur].state = EMU_AT_WARP;
  yield_to_scheduler();
}

/* One barrier per shuffle: exchange buffers alternate, and a lane can write buffer b again only
 * after the next shuffle's barrier, which every lane reaches after reading b. */
uint64_t mk_emu_shfl_xor(uint64_t v, int lane_mask) {
  const int me = g_cur, src = (me & ~31) | ((me & 31) ^ lane_mask);
  uint64_t *buf = g_slots[g_th[me].shfl++ & 1];
  buf[me] = v;
  mk_emu_syncwarp();
  return src < g_n ? buf[src] : v;
}

static void deadlock(void) {
  fprintf(stderr, "cuda emulator: deadlock in block (%u,%u,%u); thread states:", mk_emu_cur->bid.x,
          mk_emu_cur->bid.y, mk_emu_cur->bid.z);
  for (int t = 0; t < g_n; t++) fprintf(stderr, " %d", g_th[t].state);
  fprintf(stderr, "\n");
  abort();
}

void mk_emu_run(dim3 grid, dim3 block, const std::function<void()> &body) {
  const int n = (int)(block.x * block.y * block.z);
  if (n <= 0 || n > EMU_MAX_THREADS || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    fprintf(stderr, "cuda emulator: bad launch (grid %u,%u,%u block %u,%u,%u)\n", grid.x, grid.y, grid.z, block.x,
            block.y, block.z);
    abort();
  }
  if (!g_stacks) {
    g_stacks = (char *)malloc((size_t)EMU_MAX_THREADS * EMU_STACK);
    if (!g_stacks) abort();
  }
  const std::function<void()> *saved_body = g_body;
  g_body = &body;
  g_n = n;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        for (int t = 0; t < n; t++) {
          emu_thread_t *th = &g_th[t];
          th->state = EMU_READY;
          th->shfl = 0;
          th->ctx.tid = make_uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          th->ctx.bid = make_uint3(bx, by, bz);
          th->ctx.bdim = block;
          th->ctx.gdim = grid;
          th->sp = stack_init(g_stacks + (size_t)t * EMU_STACK);
        }
        for (;;) {
          for (int t = 0; t < n; t++) {
            if (g_th[t].state != EMU_READY) continue;
            g_cur = t;
            mk_emu_cur = &g_th[t].ctx;
            mk_emu_switch(&g_sched_sp, g_th[t].sp);
          }
          int live = 0, at_block = 0;
          bool released = false;
          for (int w = 0; w < n; w += 32) {
            int wl = 0, ww = 0;
            for (int t = w; t < n && t < w + 32; t++) {
              if (g_th[t].state == EMU_DONE) continue;
              wl++;
              ww += g_th[t].state == EMU_AT_WARP;
            }
            if (wl && ww == wl) {
              for (int t = w; t < n && t < w + 32; t++)
                if (g_th[t].state == EMU_AT_WARP) g_th[t].state = EMU_READY;
              released = true;
            }
          }
          if (released) continue;
          for (int t = 0; t < n; t++) {
            if (g_th[t].state == EMU_DONE) continue;
            live++;
            at_block += g_th[t].state == EMU_AT_BLOCK;
          }
          if (!live) break;
          if (at_block != live) deadlock();
          for (int t = 0; t < n; t++)
            if (g_th[t].state == EMU_AT_BLOCK) g_th[t].state = EMU_READY;
        }
      }
  g_body = saved_body;
}

/* ---- CUDA runtime: synchronous, device memory is host memory ------------------------------ */

extern "C" {

/* One emulated device per process, or MK_EMU_DEVICE_COUNT of them (all the same host memory). */
static int emu_device_count(void) {
  const char *env = getenv("MK_EMU_DEVICE_COUNT");
  int n = env ? atoi(env) : 1;
  return n >= 1 && n <= 64 ? n : 1;
}
cudaError_t cudaGetDeviceCount(int *count) {
  *count = emu_device_count();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device >= 0 && device < emu_device_count() ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
  *value = attr == cudaDevAttrMultiProcessorCount ? 8 : 0;
  return cudaSuccess;
}
const char *cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "emulated CUDA error"; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorName(cudaError_t error) { return error == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
  *s = (cudaStream_t)malloc(16);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  free((void *)s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaSuccess; } /* synchronous: always idle */
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
  *e = (cudaEvent_t)malloc(16);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  free((void *)e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  double t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
  memcpy((void *)e, &t, sizeof t);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t n) {
  /* exact size (AddressSanitizer sees any overrun), 64-byte aligned (vector loads need 16) */
  if (posix_memalign(p, 64, n ? n : 1) != 0) return cudaErrorMemoryAllocation;
  memset(*p, 0xA5, n); /* not zero: code must not rely on fresh memory being zeroed */
  return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
  free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
  if (n) memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s) {
  return cudaMemcpy(dst, src, n, kind);
}
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              enum cudaMemcpyKind kind, cudaStream_t s) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
  for (size_t r = 0; r < height; r++) memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
  return cudaSuccess;
}
/* Every emulating process has its own devices ("emu-<pid>-<device>"), as one GPU per rank;
 * MK_EMU_GPU_ID names them instead (the same value in several ranks = ranks sharing one GPU). */
cudaError_t cudaDeviceGetPCIBusId(char *id, int len, int device) {
  if (device < 0 || device >= emu_device_count()) return cudaErrorInvalidDevice;
  const char *env = getenv("MK_EMU_GPU_ID");
  if (env && *env) snprintf(id, (size_t)len, "%s-%d", env, device);
  else snprintf(id, (size_t)len, "emu-%ld-%d", (long)getpid(), device);
  return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
  memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) { return cudaMemset(p, v, n); }

/* What the benchmark uses besides: properties, events with wall-clock times, no graphs (capture
 * fails, so it launches eagerly). */
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "CPU emulator");
  prop->multiProcessorCount = 8;
  prop->totalGlobalMem = (size_t)16 << 30;
  prop->l2CacheSize = 1 << 20;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  double ta, tb;
  memcpy(&ta, (const void *)a, sizeof ta);
  memcpy(&tb, (const void *)b, sizeof tb);
  *ms = (float)((tb - ta) * 1e3);
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) { return cudaErrorNotSupported; }
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) { return cudaErrorNotSupported; }
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) { return cudaErrorNotSupported; }
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) { return cudaErrorNotSupported; }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { return cudaSuccess; }
cudaError_t cudaGraphDestroy(cudaGraph_t g) { return cudaSuccess; }

/* ---- cuBLAS: the one GEMM shape the backend uses ------------------------------------------- */

cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
  *h = (cublasHandle_t)malloc(16);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  free((void *)h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *ws, size_t bytes) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "emulated cuBLAS error"; }

/* C (m x n, ldc) = alpha op(A) B + beta C with op(A) = A^T, A (k x m, lda), B (k x n, ldb): bf16 A/B,
 * fp32 C and compute. */
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  if (transa != CUBLAS_OP_T || transb != CUBLAS_OP_N || Atype != CUDA_R_16BF || Btype != CUDA_R_16BF ||
      Ctype != CUDA_R_32F || computeType != CUBLAS_COMPUTE_32F)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const __nv_bfloat16 *a = (const __nv_bfloat16 *)A, *b = (const __nv_bfloat16 *)B;
  float *c = (float *)C;
  const float al = *(const float *)alpha, be = *(const float *)beta;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      float s = 0.f;
      for (int p = 0; p < k; p++)
        s += __bfloat162float(a[(size_t)i * lda + p]) * __bfloat162float(b[(size_t)j * ldb + p]);
      c[(size_t)j * ldc + i] = al * s + (be != 0.f ? be * c[(size_t)j * ldc + i] : 0.f);
    }
  return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */
