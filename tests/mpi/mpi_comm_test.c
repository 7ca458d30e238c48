/* MPI integration test of parallel/: context, communicator collectives, byte counters, failure
 * agreement and the request broadcast. Run under mpirun with any number of ranks:
 *   mpirun -np 3 mpi_comm_test         every check; rank 0 prints "PASS: ..." or "FAIL: ..."
 *   mpirun -np 3 mpi_comm_test fail R  rank R reports a bad config and calls mk_ctx_abort while
 *                                      the others wait in an all-reduce (used by fail_test.sh:
 *                                      the job must die within seconds)
 *   mpirun -np 2 mpi_comm_test nccl    the collectives over NCCL on device buffers (one GPU per
 *                                      rank, device = node-local rank); prints "SKIP: ..." where
 *                                      a node has fewer GPUs than ranks
 * Each failed check prints "FAIL rank R: file:line: what"; the exit status is then non-zero. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef MORPHKV_HAVE_NCCL
#include <cuda_runtime.h>
#endif

#include "parallel/ctx.h"
#include "parallel/mpi_check.h"
#include "parallel/request.h"
#include "src/cli.h" /* mk_ctx_abort */

static int g_rank = -1;
static int g_failures = 0;

#define CHECK(cond, ...)                                                    \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "FAIL rank %d: %s:%d: ", g_rank, __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                         \
      fprintf(stderr, "\n");                                                \
      g_failures++;                                                         \
    }                                                                       \
  } while (0)

#define MUST(call, err)                                                                   \
  do {                                                                                    \
    if ((call) != 0) {                                                                    \
      fprintf(stderr, "FAIL rank %d: %s:%d: %s: %s\n", g_rank, __FILE__, __LINE__, #call, \
              (err).msg);                                                                 \
      MPI_Abort(MPI_COMM_WORLD, 2);                                                       \
    }                                                                                     \
  } while (0)

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Rank r's contribution: values spread over 7 decades with both signs, so the summation order
 * changes the rounding (a rank that summed in another order would get other bits). */
static void fill(float *x, size_t n, int r, int salt) {
  uint64_t s = 1000003ULL * (uint64_t)(r + 1) + (uint64_t)salt;
  for (size_t i = 0; i < n; i++) {
    uint64_t u = splitmix(&s);
    double m = (double)(u >> 11) / 9007199254740992.0 * 2.0 - 1.0;
    int e = (int)(splitmix(&s) % 7) - 3;
    x[i] = (float)(m * pow(10.0, e));
  }
}

static uint64_t fnv1a(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

/* The same 64-bit value on every rank? */
static int same_everywhere(mk_ctx_t *ctx, uint64_t v) {
  uint64_t *all = malloc(sizeof(uint64_t) * (size_t)ctx->world);
  MPI_Allgather(&v, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, ctx->mpi);
  int ok = 1;
  for (int r = 0; r < ctx->world; r++) ok &= all[r] == v;
  free(all);
  return ok;
}

static void test_ctx(mk_ctx_t *ctx) {
  int wr, ws;
  MPI_Comm_rank(MPI_COMM_WORLD, &wr);
  MPI_Comm_size(MPI_COMM_WORLD, &ws);
  CHECK(ctx->rank == wr && ctx->world == ws, "ctx rank/world %d/%d vs %d/%d", ctx->rank, ctx->world,
        wr, ws);
  CHECK(ctx->comm && ctx->comm->rank == wr && ctx->comm->size == ws, "comm rank/size");
  CHECK(strcmp(ctx->comm->ops->name, "mpi") == 0, "comm is %s", ctx->comm->ops->name);
  /* node-local rank: the ranks sharing this host's name, in rank order */
  char name[MPI_MAX_PROCESSOR_NAME] = {0}, *names;
  int len;
  MPI_Get_processor_name(name, &len);
  names = calloc((size_t)ws, MPI_MAX_PROCESSOR_NAME);
  MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
                ctx->mpi);
  int before = 0, same = 0;
  for (int r = 0; r < ws; r++) {
    if (strcmp(names + (size_t)r * MPI_MAX_PROCESSOR_NAME, name) == 0) {
      same++;
      if (r < wr) before++;
    }
  }
  free(names);
  CHECK(ctx->local_size == same && ctx->local_rank == before, "local %d/%d, expected %d/%d",
        ctx->local_rank, ctx->local_size, before, same);
}

static void test_allreduce(mk_ctx_t *ctx, const char *mode) {
  static const size_t sizes[] = {1, 7, 1000, 1u << 18};
  mk_error_t err;
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    size_t n = sizes[si];
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *o = malloc(n * sizeof *o);
    double *ref = calloc(n, sizeof *ref), *mag = calloc(n, sizeof *mag);
    float *mx = malloc(n * sizeof *mx);
    for (int r = 0; r < ctx->world; r++) { /* every rank's data, regenerated locally */
      fill(o, n, r, (int)si);
      for (size_t i = 0; i < n; i++) {
        ref[i] += o[i];
        mag[i] += fabs(o[i]);
        mx[i] = r == 0 || o[i] > mx[i] ? o[i] : mx[i];
      }
    }
    fill(x, n, ctx->rank, (int)si);
    memcpy(y, x, n * sizeof *x);
    MUST(mk_comm_allreduce_sum_f32(ctx->comm, MK_COMM_MODEL, x, n, &err), err);
    MUST(mk_comm_allreduce_max_f32(ctx->comm, MK_COMM_SCORE, y, n, &err), err);
    size_t bad_sum = 0, bad_max = 0;
    for (size_t i = 0; i < n; i++) {
      /* fp32 summation of `world` terms: error <= world * eps * sum|x| */
      if (fabs(x[i] - ref[i]) > (double)ctx->world * 1.2e-7 * mag[i] + 1e-30) bad_sum++;
      if (y[i] != mx[i]) bad_max++;
    }
    CHECK(bad_sum == 0, "%s: allreduce sum n=%zu: %zu elements off the fp64 reference", mode, n,
          bad_sum);
    CHECK(bad_max == 0, "%s: allreduce max n=%zu: %zu elements differ from the exact max", mode, n,
          bad_max);
    CHECK(same_everywhere(ctx, fnv1a(x, n * sizeof *x)),
          "%s: allreduce sum n=%zu: ranks hold different bits", mode, n);
    CHECK(same_everywhere(ctx, fnv1a(y, n * sizeof *y)),
          "%s: allreduce max n=%zu: ranks hold different bits", mode, n);
    free(x), free(y), free(o), free(ref), free(mag), free(mx);
  }
}

static void test_bcast_allgather(mk_ctx_t *ctx) {
  mk_error_t err;
  enum { N = 1000 };
  unsigned char buf[N];
  for (int root = 0; root < ctx->world; root++) {
    for (int i = 0; i < N; i++) buf[i] = ctx->rank == root ? (unsigned char)(i * 31 + root) : 0xee;
    MUST(mk_comm_bcast(ctx->comm, MK_COMM_OTHER, buf, N, root, &err), err);
    int bad = 0;
    for (int i = 0; i < N; i++) bad += buf[i] != (unsigned char)(i * 31 + root);
    CHECK(bad == 0, "bcast from root %d: %d bytes wrong", root, bad);
  }
  /* invalid root: an error naming the call and the rank, not a crash */
  err.msg[0] = '\0';
  CHECK(mk_comm_bcast(ctx->comm, MK_COMM_OTHER, buf, 4, ctx->world, &err) == -1 &&
            strstr(err.msg, "MPI_Bcast") && strstr(err.msg, "rank"),
        "bcast with root %d: \"%s\"", ctx->world, err.msg);

  const size_t each = 24;
  unsigned char mine[24], *all = malloc(each * (size_t)ctx->world);
  for (size_t i = 0; i < each; i++) mine[i] = (unsigned char)(ctx->rank * 7 + (int)i);
  MUST(mk_comm_allgather(ctx->comm, MK_COMM_OTHER, mine, all, each, &err), err);
  int bad = 0;
  for (int r = 0; r < ctx->world; r++)
    for (size_t i = 0; i < each; i++)
      bad += all[(size_t)r * each + i] != (unsigned char)(r * 7 + (int)i);
  CHECK(bad == 0, "allgather: %d bytes wrong", bad);
  /* in place: this rank's block already sits in recv */
  memset(all, 0, each * (size_t)ctx->world);
  memcpy(all + (size_t)ctx->rank * each, mine, each);
  MUST(mk_comm_allgather(ctx->comm, MK_COMM_OTHER, all + (size_t)ctx->rank * each, all, each, &err),
       err);
  bad = 0;
  for (int r = 0; r < ctx->world; r++)
    for (size_t i = 0; i < each; i++)
      bad += all[(size_t)r * each + i] != (unsigned char)(r * 7 + (int)i);
  CHECK(bad == 0, "allgather in place: %d bytes wrong", bad);
  free(all);
  MUST(mk_comm_barrier(ctx->comm, &err), err);
}

static void test_counters(mk_ctx_t *ctx) {
  mk_error_t err;
  mk_ctx_t c2;
  MUST(mk_ctx_init(&c2, MPI_COMM_WORLD, &err), err);
  float v[100] = {0};
  char b[10] = {0};
  MUST(mk_comm_allreduce_sum_f32(c2.comm, MK_COMM_MODEL, v, 100, &err), err);
  MUST(mk_comm_allreduce_sum_f32(c2.comm, MK_COMM_MODEL, v, 50, &err), err);
  MUST(mk_comm_allreduce_max_f32(c2.comm, MK_COMM_SCORE, v, 64, &err), err);
  MUST(mk_comm_bcast(c2.comm, MK_COMM_OTHER, b, 10, 0, &err), err);
  MUST(mk_comm_allgather(c2.comm, MK_COMM_OTHER, b, v, 3, &err), err);
  uint64_t w = c2.world > 1;
  CHECK(c2.comm->bytes_model == w * 600 && c2.comm->bytes_score == w * 256 &&
            c2.comm->bytes_other == w * (10 + 3 * (uint64_t)c2.world),
        "counters model %llu score %llu other %llu", (unsigned long long)c2.comm->bytes_model,
        (unsigned long long)c2.comm->bytes_score, (unsigned long long)c2.comm->bytes_other);
  /* switching the implementation keeps the counts */
  MUST(mk_ctx_use_mpi(&c2, MK_COMM_MPI_REDUCE_BCAST, &err), err);
  CHECK(c2.comm->bytes_model == w * 600, "counters lost on mk_ctx_use_mpi");
  mk_ctx_free(&c2);
  mk_ctx_t zero;
  memset(&zero, 0, sizeof zero);
  mk_ctx_free(&zero); /* a zeroed context frees cleanly */
}

static void test_agree_and_errors(mk_ctx_t *ctx) {
  mk_error_t err = {{0}};
  CHECK(mk_ctx_agree(ctx, 0, &err) == 0, "agree with all ok");
  int last = ctx->world - 1;
  int st = 0;
  if (ctx->rank == last) st = mk_fail(&err, "shard file x.gguf is missing");
  char want[128];
  snprintf(want, sizeof want, "rank %d: shard file x.gguf is missing", last);
  CHECK(mk_ctx_agree(ctx, st, &err) == -1 && strcmp(err.msg, want) == 0, "agree: \"%s\"", err.msg);
  /* ctx->mpi returns errors instead of aborting, and mk_mpi_fail names call and rank */
  int dummy = 0;
  int rc = MPI_Bcast(&dummy, 1, MPI_INT, ctx->world + 3, ctx->mpi);
  CHECK(rc != MPI_SUCCESS, "MPI_Bcast with an invalid root succeeded");
  if (rc != MPI_SUCCESS) {
    mk_mpi_fail(&err, rc, "MPI_Bcast", ctx->rank, "here.c", 1);
    char head[64];
    snprintf(head, sizeof head, "here.c:1: MPI_Bcast failed on rank %d: ", ctx->rank);
    CHECK(strncmp(err.msg, head, strlen(head)) == 0 && strlen(err.msg) > strlen(head) + 3,
          "mpi error message \"%s\"", err.msg);
  }
}

static char *dup_str(const char *s) {
  char *d = malloc(strlen(s) + 1);
  strcpy(d, s);
  return d;
}

static void make_request(mk_request_t *r) {
  mk_request_init(r);
  r->id = 42;
  r->n_prompt = 5000;
  r->prompt = malloc(r->n_prompt * sizeof *r->prompt);
  for (size_t i = 0; i < r->n_prompt; i++) r->prompt[i] = (int32_t)((i * 104729u) % 49152u);
  r->sampling.temperature = 0.8f;
  r->sampling.top_k = 50;
  r->sampling.seed = 1234567890123ULL;
  r->max_new_tokens = 128;
  r->cache.policy = MK_KV_MORPHKV;
  r->cache.window = 8;
  r->cache.capacity = 256;
  r->n_stop = 1;
  r->stop = malloc(sizeof *r->stop);
  r->stop[0] = dup_str("<|im_end|>");
}

static void test_request_bcast(mk_ctx_t *ctx) {
  mk_error_t err = {{0}};
  mk_request_t want, req;
  make_request(&want);
  if (ctx->rank == 0) {
    make_request(&req);
  } else {
    memset(&req, 0x5a, sizeof req); /* receivers' input is ignored */
  }
  uint64_t other0 = ctx->comm->bytes_other;
  MUST(mk_request_bcast(ctx, &req, 49152, &err), err);
  CHECK(req.kind == want.kind && req.id == want.id && req.n_prompt == want.n_prompt &&
            memcmp(req.prompt, want.prompt, want.n_prompt * sizeof *want.prompt) == 0 &&
            memcmp(&req.sampling, &want.sampling, sizeof want.sampling) == 0 &&
            req.max_new_tokens == want.max_new_tokens &&
            req.cache.policy == want.cache.policy && req.cache.window == want.cache.window &&
            req.cache.capacity == want.cache.capacity && req.n_stop == 1 &&
            strcmp(req.stop[0], want.stop[0]) == 0,
        "request differs after bcast");
  CHECK(ctx->world == 1 || ctx->comm->bytes_other > other0 + 5000, "request bytes not counted");
  mk_request_free(&req);

  /* rank 0's request is invalid: every rank fails with rank 0's reason */
  if (ctx->rank == 0) {
    make_request(&req);
    req.sampling.top_p = 2.0f;
  }
  CHECK(
      mk_request_bcast(ctx, &req, 49152, &err) == -1 && strstr(err.msg, "rank 0: request: top_p 2"),
      "invalid request on rank 0: \"%s\"", err.msg);
  if (ctx->rank == 0) mk_request_free(&req);

  /* a receiver refuses (its vocabulary is smaller): every rank fails, naming rank 1 */
  if (ctx->world > 1) {
    if (ctx->rank == 0) make_request(&req);
    CHECK(mk_request_bcast(ctx, &req, ctx->rank == 0 ? 49152 : 100, &err) == -1 &&
              strstr(err.msg, "rank 1: request: prompt token") && strstr(err.msg, "0..99"),
          "receiver refusal: \"%s\"", err.msg);
    if (ctx->rank == 0) mk_request_free(&req);
  }

  /* shutdown */
  if (ctx->rank == 0) {
    mk_request_init(&req);
    req.kind = MK_REQUEST_SHUTDOWN;
  }
  MUST(mk_request_bcast(ctx, &req, 49152, &err), err);
  CHECK(req.kind == MK_REQUEST_SHUTDOWN && req.n_prompt == 0, "shutdown request");
  mk_request_free(&req);
  mk_request_free(&want);
}

static int run_fail_mode(mk_ctx_t *ctx, int fail_rank) {
  mk_error_t err;
  if (ctx->rank == fail_rank) {
    struct timespec ts = {0, 300 * 1000 * 1000}; /* let the others reach the collective */
    nanosleep(&ts, NULL);
    mk_fail(&err, "bad config: n_ff 1540 is not a multiple of 32 (test-induced failure)");
    mk_ctx_abort(ctx, err.msg);
  }
  /* everyone else waits in the forward pass's all-reduce, which rank fail_rank never joins */
  float v[16] = {0};
  mk_comm_allreduce_sum_f32(ctx->comm, MK_COMM_MODEL, v, 16, &err);
  fprintf(stderr, "rank %d: the all-reduce returned although rank %d never joined\n", ctx->rank,
          fail_rank);
  return 3;
}

#ifdef MORPHKV_HAVE_NCCL
#define CUDA_MUST(call)                                                                   \
  do {                                                                                    \
    cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess) {                                                              \
      fprintf(stderr, "FAIL rank %d: %s:%d: %s: %s\n", g_rank, __FILE__, __LINE__, #call, \
              cudaGetErrorString(e_));                                                    \
      MPI_Abort(MPI_COMM_WORLD, 2);                                                       \
    }                                                                                     \
  } while (0)

/* NCCL: device buffers, results compared with the fp64 reference and across ranks. */
static int run_nccl_mode(mk_ctx_t *ctx) {
  mk_error_t err;
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess) ndev = 0;
  int enough = ndev >= ctx->local_size, all_enough = 0;
  MPI_Allreduce(&enough, &all_enough, 1, MPI_INT, MPI_MIN, ctx->mpi);
  if (!all_enough) {
    if (ctx->rank == 0)
      printf("SKIP: NCCL test needs one GPU per rank (this node has %d for %d ranks)\n", ndev,
             ctx->local_size);
    return 0;
  }
  cudaStream_t stream;
  CUDA_MUST(cudaSetDevice(ctx->local_rank));
  CUDA_MUST(cudaStreamCreate(&stream));
  MUST(mk_ctx_use_nccl(ctx, ctx->local_rank, stream, &err), err);
  CHECK(strcmp(ctx->comm->ops->name, "nccl") == 0, "comm is %s", ctx->comm->ops->name);

  static const size_t sizes[] = {1, 1000, 1u << 20};
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    size_t n = sizes[si];
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *o = malloc(n * sizeof *o);
    double *ref = calloc(n, sizeof *ref), *mag = calloc(n, sizeof *mag);
    float *mx = malloc(n * sizeof *mx), *dx, *dy;
    for (int r = 0; r < ctx->world; r++) {
      fill(o, n, r, (int)si);
      for (size_t i = 0; i < n; i++) {
        ref[i] += o[i];
        mag[i] += fabs(o[i]);
        mx[i] = r == 0 || o[i] > mx[i] ? o[i] : mx[i];
      }
    }
    fill(x, n, ctx->rank, (int)si);
    CUDA_MUST(cudaMalloc((void **)&dx, n * sizeof *x));
    CUDA_MUST(cudaMalloc((void **)&dy, n * sizeof *x));
    CUDA_MUST(cudaMemcpy(dx, x, n * sizeof *x, cudaMemcpyHostToDevice));
    CUDA_MUST(cudaMemcpy(dy, x, n * sizeof *x, cudaMemcpyHostToDevice));
    MUST(mk_comm_allreduce_sum_f32(ctx->comm, MK_COMM_MODEL, dx, n, &err), err);
    MUST(mk_comm_allreduce_max_f32(ctx->comm, MK_COMM_SCORE, dy, n, &err), err);
    MUST(mk_comm_barrier(ctx->comm, &err), err);
    CUDA_MUST(cudaMemcpy(x, dx, n * sizeof *x, cudaMemcpyDeviceToHost));
    CUDA_MUST(cudaMemcpy(y, dy, n * sizeof *x, cudaMemcpyDeviceToHost));
    size_t bad_sum = 0, bad_max = 0;
    for (size_t i = 0; i < n; i++) {
      if (fabs(x[i] - ref[i]) > (double)ctx->world * 1.2e-7 * mag[i] + 1e-30) bad_sum++;
      if (y[i] != mx[i]) bad_max++;
    }
    CHECK(bad_sum == 0, "nccl: allreduce sum n=%zu: %zu elements off the fp64 reference", n,
          bad_sum);
    CHECK(bad_max == 0, "nccl: allreduce max n=%zu: %zu elements differ", n, bad_max);
    CHECK(same_everywhere(ctx, fnv1a(x, n * sizeof *x)),
          "nccl: allreduce sum n=%zu: ranks hold different bits", n);
    cudaFree(dx), cudaFree(dy);
    free(x), free(y), free(o), free(ref), free(mag), free(mx);
  }

  /* bcast and allgather on device bytes */
  enum { N = 4096 };
  unsigned char *h = malloc((size_t)N * (size_t)ctx->world), *d;
  CUDA_MUST(cudaMalloc((void **)&d, (size_t)N * (size_t)ctx->world));
  for (int root = 0; root < ctx->world; root++) {
    for (int i = 0; i < N; i++) h[i] = ctx->rank == root ? (unsigned char)(i * 13 + root) : 0xee;
    CUDA_MUST(cudaMemcpy(d, h, N, cudaMemcpyHostToDevice));
    MUST(mk_comm_bcast(ctx->comm, MK_COMM_OTHER, d, N, root, &err), err);
    MUST(mk_comm_barrier(ctx->comm, &err), err);
    CUDA_MUST(cudaMemcpy(h, d, N, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int i = 0; i < N; i++) bad += h[i] != (unsigned char)(i * 13 + root);
    CHECK(bad == 0, "nccl bcast from %d: %d bytes wrong", root, bad);
  }
  for (int i = 0; i < N; i++)
    h[(size_t)ctx->rank * N + (size_t)i] = (unsigned char)(ctx->rank * 5 + i);
  CUDA_MUST(
      cudaMemcpy(d + (size_t)ctx->rank * N, h + (size_t)ctx->rank * N, N, cudaMemcpyHostToDevice));
  MUST(mk_comm_allgather(ctx->comm, MK_COMM_OTHER, d + (size_t)ctx->rank * N, d, N, &err), err);
  MUST(mk_comm_barrier(ctx->comm, &err), err);
  CUDA_MUST(cudaMemcpy(h, d, (size_t)N * (size_t)ctx->world, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int r = 0; r < ctx->world; r++)
    for (int i = 0; i < N; i++) bad += h[(size_t)r * N + (size_t)i] != (unsigned char)(r * 5 + i);
  CHECK(bad == 0, "nccl allgather: %d bytes wrong", bad);
  cudaFree(d);
  free(h);

  int total = 0;
  MPI_Allreduce(&g_failures, &total, 1, MPI_INT, MPI_SUM, ctx->mpi);
  if (ctx->rank == 0) {
    if (total)
      printf("FAIL: %d NCCL check(s) failed over %d ranks\n", total, ctx->world);
    else
      printf("PASS: nccl comm tests on %d ranks\n", ctx->world);
  }
  mk_comm_free(ctx->comm); /* before the stream it uses */
  ctx->comm = NULL;
  cudaStreamDestroy(stream);
  return total ? 1 : 0;
}
#endif

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  mk_ctx_t ctx;
  mk_error_t err;
  if (mk_ctx_init(&ctx, MPI_COMM_WORLD, &err)) mk_ctx_abort(NULL, err.msg);
  g_rank = ctx.rank;

  if (argc >= 3 && strcmp(argv[1], "fail") == 0) return run_fail_mode(&ctx, atoi(argv[2]));
  if (argc >= 2 && strcmp(argv[1], "nccl") == 0) {
#ifdef MORPHKV_HAVE_NCCL
    int rc = run_nccl_mode(&ctx);
#else
    if (ctx.rank == 0) printf("SKIP: built without NCCL\n");
    int rc = 0;
#endif
    mk_ctx_free(&ctx);
    MPI_Finalize();
    return rc;
  }

  test_ctx(&ctx);
  test_allreduce(&ctx, "allreduce");
  test_bcast_allgather(&ctx);
  test_counters(&ctx);
  test_agree_and_errors(&ctx);
  test_request_bcast(&ctx);
  MUST(mk_ctx_use_mpi(&ctx, MK_COMM_MPI_REDUCE_BCAST, &err), err);
  test_allreduce(&ctx, "reduce+bcast");
  test_bcast_allgather(&ctx);

  int total = 0;
  MPI_Allreduce(&g_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (ctx.rank == 0) {
    if (total)
      printf("FAIL: %d check(s) failed over %d ranks\n", total, ctx.world);
    else
      printf("PASS: mpi comm tests on %d ranks\n", ctx.world);
  }
  mk_ctx_free(&ctx);
  MPI_Finalize();
  return total ? 1 : 0;
}
