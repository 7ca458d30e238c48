/* Internal to parallel/: turning MPI error codes into mk_error_t messages. The communicators this
 * module owns all use MPI_ERRORS_RETURN, so an MPI failure comes back as a code, and
 *   MK_MPI_CHECK(MPI_Bcast(...), rank, err);
 * returns -1 from the calling function with "file:line: MPI_Bcast(...) failed on rank R: <MPI's
 * own description>". */
#ifndef MK_MPI_CHECK_H
#define MK_MPI_CHECK_H

#include <mpi.h>

#include "src/mk_error.h"

static inline int mk_mpi_fail(mk_error_t *err, int code, const char *call, int rank,
                              const char *file, int line) {
  char what[MPI_MAX_ERROR_STRING + 1];
  int len = 0;
  if (MPI_Error_string(code, what, &len) != MPI_SUCCESS) len = 0;
  what[len] = '\0';
  if (!len) snprintf(what, sizeof what, "MPI error code %d", code);
  return mk_fail(err, "%s:%d: %s failed on rank %d: %s", file, line, call, rank, what);
}

#define MK_MPI_CHECK(call, rank, err)                                           \
  do {                                                                          \
    int mk_mpi_rc_ = (call);                                                    \
    if (mk_mpi_rc_ != MPI_SUCCESS)                                              \
      return mk_mpi_fail((err), mk_mpi_rc_, #call, (rank), __FILE__, __LINE__); \
  } while (0)

/* *out = a private duplicate of comm that returns errors instead of aborting (MPI_ERRORS_RETURN),
 * with this rank's place in it. what names the owner in the message. On failure *out may be a
 * communicator the caller frees (or MPI_COMM_NULL). */
static inline int mk_mpi_dup(MPI_Comm comm, const char *what, MPI_Comm *out, int *rank, int *size,
                             mk_error_t *err) {
  int wrank = -1;
  MPI_Comm_rank(comm, &wrank);
  *out = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(comm, out);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(*out, rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(*out, size);
  if (rc == MPI_SUCCESS) return 0;
  char call[96];
  snprintf(call, sizeof call, "MPI_Comm_dup (%s)", what);
  return mk_mpi_fail(err, rc, call, wrank, __FILE__, __LINE__);
}

#endif
