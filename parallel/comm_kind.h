/* Which communicator carries the forward pass's collectives (--comm, config key "comm"). No MPI
 * here, so front ends and the engine's public header can name the choice. parallel/ctx.h
 * (mk_ctx_comm_for_backend) says how each choice meets each backend. */
#ifndef MK_COMM_KIND_H
#define MK_COMM_KIND_H

typedef enum mk_comm_kind {
  MK_COMM_KIND_AUTO = 0, /* CPU: MPI; CUDA: NCCL when built and every rank has its own GPU, else MPI staged */
  MK_COMM_KIND_MPI,      /* MPI; device buffers are staged through pinned host memory */
  MK_COMM_KIND_NCCL,     /* NCCL on the backend's stream, in place on device buffers (CUDA backend only) */
} mk_comm_kind_t;

static inline const char *mk_comm_kind_name(mk_comm_kind_t k) {
  return k == MK_COMM_KIND_MPI ? "mpi" : k == MK_COMM_KIND_NCCL ? "nccl" : "auto";
}

#endif
