#!/usr/bin/env bash
# morphkv-mpi.sh: per-rank binding wrapper for tensor-parallel runs. Put it between the launcher
# and the program; it picks this rank's GPU (GPU nodes) or core set (CPU nodes), then execs the
# command unchanged.
#
#   mpirun -np 4 launch/mpi/morphkv-mpi.sh build/morphkv generate --model M.gguf --prompt "..."
#   mpirun -np 8 --hostfile launch/mpi/hostfile.example launch/mpi/morphkv-mpi.sh build/morphkv ...
#   srun -N 2 --ntasks-per-node=4 launch/mpi/morphkv-mpi.sh build/morphkv generate ...
#   (see slurm.sbatch for a batch script)
#
# The node-local rank comes from the launcher: OMPI_COMM_WORLD_LOCAL_RANK (Open MPI),
# SLURM_LOCALID (srun), MPI_LOCALRANKID (MPICH/Hydra); the ranks on this node likewise from
# OMPI_COMM_WORLD_LOCAL_SIZE / SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE / MPI_LOCALNRANKS.
#
# GPU node (nvidia-smi lists GPUs): CUDA_VISIBLE_DEVICES is set to ONE device, the local rank's
#   entry of the devices this job may use (the scheduler's CUDA_VISIBLE_DEVICES if it set one,
#   else all GPUs). If the scheduler already gave this rank exactly one device it is kept. More
#   ranks than GPUs on a node is refused (NCCL cannot put two ranks on one device).
# CPU node: the cores this process may use (its affinity mask) are cut into local_size equal
#   blocks; this rank is bound to its block with taskset when the launcher did not bind it
#   already, and OMP_NUM_THREADS / OMP_PLACES=cores / OMP_PROC_BIND=close are set (a value you
#   exported yourself is kept). Better still, let the launcher bind:
#     mpirun --map-by socket:PE=<cores per rank> --bind-to core ...
#     srun --cpus-per-task=<cores per rank> --cpu-bind=cores ...
#   in which case the wrapper only sets the OpenMP variables to the bound core count.
#
# Environment knobs:
#   MORPHKV_DEVICE=auto|gpu|cpu   force one mode (default auto: gpu when nvidia-smi shows GPUs)
#   MORPHKV_BIND=auto|none        none: set nothing, only report
#   MORPHKV_MPI_VERBOSE=1         print what each rank got, on stderr
set -euo pipefail

if [ $# -eq 0 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi

die() { echo "morphkv-mpi: ${rank_label:-rank ?}: $*" >&2; exit 1; }
say() { if [ "${MORPHKV_MPI_VERBOSE:-0}" = 1 ]; then echo "morphkv-mpi: $rank_label: $*" >&2; fi; }

# ---- who am I on this node ------------------------------------------------------------------
local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-${MPI_LOCALRANKID:-${PMI_LOCAL_RANK:-0}}}}
local_size=${OMPI_COMM_WORLD_LOCAL_SIZE:-${MPI_LOCALNRANKS:-${PMI_LOCAL_SIZE:-}}}
if [ -z "$local_size" ] && [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then
  local_size=$SLURM_NTASKS_PER_NODE
fi
if [ -z "$local_size" ] && [ -n "${SLURM_TASKS_PER_NODE:-}" ]; then
  # "4(x2),3" -> the count for this node; SLURM_NODEID picks the entry
  local_size=$(awk -v spec="$SLURM_TASKS_PER_NODE" -v node="${SLURM_NODEID:-0}" 'BEGIN {
    n = split(spec, parts, ","); k = 0
    for (i = 1; i <= n; i++) {
      c = parts[i]; rep = 1
      if (match(c, /\(x[0-9]+\)/)) { rep = substr(c, RSTART + 2, RLENGTH - 3) + 0; c = substr(c, 1, RSTART - 1) }
      for (j = 0; j < rep; j++) { if (k == node) { print c + 0; exit } k++ }
    }
    print 1 }')
fi
local_size=${local_size:-1}
world_rank=${OMPI_COMM_WORLD_RANK:-${SLURM_PROCID:-${PMI_RANK:-0}}}
rank_label="rank $world_rank (local $local_rank/$local_size on $(hostname -s 2>/dev/null || hostname))"
case "$local_rank$local_size" in *[!0-9]*) die "bad local rank/size '$local_rank'/'$local_size'" ;; esac
[ "$local_rank" -lt "$local_size" ] || die "local rank $local_rank >= local size $local_size"

mode=${MORPHKV_DEVICE:-auto}
bind=${MORPHKV_BIND:-auto}

gpu_count() {
  command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
  nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
}

if [ "$mode" = auto ]; then
  if [ "$(gpu_count)" -gt 0 ]; then mode=gpu; else mode=cpu; fi
fi

# ---- GPU node: one device per rank ------------------------------------------------------------
if [ "$mode" = gpu ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a devs <<<"$CUDA_VISIBLE_DEVICES"
  else
    n=$(gpu_count)
    [ "$n" -gt 0 ] || die "MORPHKV_DEVICE=gpu but nvidia-smi lists no GPU"
    devs=()
    for ((i = 0; i < n; i++)); do devs+=("$i"); done
  fi
  if [ "${#devs[@]}" -eq 1 ]; then
    dev=${devs[0]} # the scheduler already gave this rank its own device (e.g. --gpus-per-task=1)
  else
    [ "$local_size" -le "${#devs[@]}" ] ||
      die "$local_size ranks on this node but only ${#devs[@]} GPUs (${devs[*]}); use at most ${#devs[@]} ranks per node"
    dev=${devs[$local_rank]}
  fi
  if [ "$bind" != none ]; then export CUDA_VISIBLE_DEVICES=$dev; fi
  # a few host threads per rank are plenty when the GPU does the work
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  say "GPU $dev (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}), OMP_NUM_THREADS=$OMP_NUM_THREADS"
  exec "$@"
fi

# ---- CPU node: one block of cores per rank ----------------------------------------------------
[ "$mode" = cpu ] || die "MORPHKV_DEVICE must be auto, gpu or cpu (got '$mode')"

# The CPUs this process may run on, expanded: "0-3,8" -> 0 1 2 3 8
allowed=$(awk '/^Cpus_allowed_list:/ { print $2 }' /proc/self/status 2>/dev/null || true)
cpus=()
IFS=, read -r -a ranges <<<"${allowed:-}"
for r in "${ranges[@]}"; do
  if [[ $r == *-* ]]; then
    for ((c = ${r%-*}; c <= ${r#*-}; c++)); do cpus+=("$c"); done
  elif [ -n "$r" ]; then
    cpus+=("$r")
  fi
done
online=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo "${#cpus[@]}")
[ "${#cpus[@]}" -gt 0 ] || cpus=($(seq 0 $((online - 1))))

if [ "${#cpus[@]}" -lt "$online" ] || [ "$bind" = none ]; then
  # Already bound by the launcher (or binding disabled): use what we were given.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${#cpus[@]}}
  export OMP_PLACES=${OMP_PLACES:-cores} OMP_PROC_BIND=${OMP_PROC_BIND:-close}
  say "CPU, launcher binding kept (${#cpus[@]} CPUs: ${allowed:-?}), OMP_NUM_THREADS=$OMP_NUM_THREADS"
  exec "$@"
fi

per=$(( ${#cpus[@]} / local_size ))
if [ "$per" -lt 1 ]; then
  # more ranks than CPUs (oversubscribed test runs): share, one thread each, no pinning
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  say "CPU, $local_size ranks on ${#cpus[@]} CPUs: not pinned, OMP_NUM_THREADS=$OMP_NUM_THREADS"
  exec "$@"
fi
block=("${cpus[@]:$((local_rank * per)):$per}")
list=$(IFS=,; echo "${block[*]}")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$per}
export OMP_PLACES=${OMP_PLACES:-cores} OMP_PROC_BIND=${OMP_PROC_BIND:-close}
if command -v taskset >/dev/null 2>&1; then
  say "CPU cores $list, OMP_NUM_THREADS=$OMP_NUM_THREADS"
  exec taskset -c "$list" "$@"
fi
say "CPU (no taskset: not pinned; cores $list intended), OMP_NUM_THREADS=$OMP_NUM_THREADS"
exec "$@"
