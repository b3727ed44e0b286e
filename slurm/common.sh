#!/usr/bin/env bash
# Shared by slurm/*.sbatch. Two uses:
#   source slurm/common.sh                      in a batch script: the cotdistill_* functions below
#   bash slurm/common.sh node SCRIPT ARGS...    one task per node (started by srun): torchrun on this node
#
# Environment read here (all optional):
#   COTDISTILL_ROOT    the repository (shared file system); default: the directory sbatch was run from
#   PYTHON             interpreter; default COTDISTILL_ROOT/.venv/bin/python when it exists, else python3
#   GPUS_PER_NODE      ranks per node (torchrun --nproc_per_node); default SLURM_GPUS_ON_NODE, else 1
#   COTDISTILL_IFNAME  network interface for gloo/NCCL (sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME)
#   MASTER_PORT        rendezvous port on the first node; default 20000 + SLURM_JOB_ID % 20000
#   OMP_NUM_THREADS    threads per rank; default: the node's allocated CPUs / GPUS_PER_NODE
#   TORCH_EXTENSIONS_DIR  compiled DeepSpeed ops to start from (default ~/.cache/cotdistill/torch_extensions);
#                      each node copies them to ${TMPDIR:-/tmp}/cotdistill-$SLURM_JOB_ID/ and works there

cotdistill_log() { echo "[cotdistill-slurm $(date +%H:%M:%S)] $*"; }

# Smallest CPU count in SLURM_JOB_CPUS_PER_NODE ("2(x3),4" -> 2): what every node's task may use.
cotdistill_min_cpus() {
    local spec=${SLURM_JOB_CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-1}} min="" part n
    local -a parts
    IFS=, read -r -a parts <<< "$spec"
    for part in "${parts[@]}"; do
        n=${part%%(*}
        [[ $n =~ ^[0-9]+$ ]] || continue
        if [ -z "$min" ] || [ "$n" -lt "$min" ]; then min=$n; fi
    done
    echo "${min:-1}"
}

# In the batch shell: repository, interpreter, a per-job temp folder, the log folder; prints a header line.
cotdistill_setup() {
    COTDISTILL_ROOT=$(cd "${COTDISTILL_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}" && pwd) || exit 2
    cd "$COTDISTILL_ROOT" || exit 2
    if [ -z "${PYTHON:-}" ]; then
        if [ -x "$COTDISTILL_ROOT/.venv/bin/python" ]; then PYTHON=$COTDISTILL_ROOT/.venv/bin/python; else PYTHON=python3; fi
    fi
    export COTDISTILL_ROOT PYTHON PYTHONUNBUFFERED=1
    export COTDISTILL_JOB_TMP=${TMPDIR:-/tmp}/cotdistill-${SLURM_JOB_ID:-$$}
    mkdir -p "$COTDISTILL_JOB_TMP"
    touch "$COTDISTILL_JOB_TMP/started"
    trap 'rm -rf "$COTDISTILL_JOB_TMP"' EXIT
    # The log folder: where sbatch --output points (logs/ by default); the hostfile goes next to it.
    local stdout
    stdout=$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | tr ' ' '\n' | sed -n 's/^StdOut=//p' | head -1)
    COTDISTILL_LOG_DIR=$(dirname "${stdout:-logs/x}")
    COTDISTILL_NODE_NAMES=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname -s)}" | paste -sd' ')
    cotdistill_log "job ${SLURM_JOB_ID:-?} (${SLURM_JOB_NAME:-?}) SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}" \
        "nodes=[$COTDISTILL_NODE_NAMES] root=$COTDISTILL_ROOT python=$PYTHON"
}

# For torchrun jobs: ranks per node, rendezvous address and port, network interface, threads per rank.
cotdistill_setup_distributed() {
    export GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
    if [ -n "${COTDISTILL_IFNAME:-}" ]; then
        export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$COTDISTILL_IFNAME}
        export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$COTDISTILL_IFNAME}
    fi
    export COTDISTILL_NODES=${SLURM_JOB_NUM_NODES:-1}
    local first=${COTDISTILL_NODE_NAMES%% *}
    # The first node's NodeAddr, not its name: node names need not resolve (they do not in the test cluster).
    MASTER_ADDR=$(scontrol show node "$first" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -1)
    export MASTER_ADDR=${MASTER_ADDR:-$first}
    export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
    export COTDISTILL_CPUS_PER_NODE
    COTDISTILL_CPUS_PER_NODE=$(cotdistill_min_cpus)
    if [ -z "${OMP_NUM_THREADS:-}" ]; then
        local threads=$((COTDISTILL_CPUS_PER_NODE / GPUS_PER_NODE))
        export OMP_NUM_THREADS=$((threads > 0 ? threads : 1))
    fi
    export COTDISTILL_EXTENSIONS_SEED=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/cotdistill/torch_extensions}
    cotdistill_log "nodes=$COTDISTILL_NODES GPUS_PER_NODE=$GPUS_PER_NODE OMP_NUM_THREADS=$OMP_NUM_THREADS" \
        "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT IFNAME=${COTDISTILL_IFNAME:--}"
}

# A DeepSpeed hostfile for the allocation, next to the job log, for `deepspeed --hostfile` users.
cotdistill_write_hostfile() {
    local file=$COTDISTILL_LOG_DIR/hostfile-${SLURM_JOB_ID:-0} node
    if mkdir -p "$COTDISTILL_LOG_DIR" 2>/dev/null && : > "$file" 2>/dev/null; then
        for node in $COTDISTILL_NODE_NAMES; do echo "$node slots=$GPUS_PER_NODE" >> "$file"; done
        cotdistill_log "hostfile: $file"
    fi
}

# Stop requests. Slurm sends USR1 to this shell only (#SBATCH --signal=B:USR1@N before a time limit, or
# `scancel --signal=USR1 --batch JOBID` by hand) and TERM to every process of the job (scancel, the time limit
# itself, preemption). The shell records the request and passes COTDISTILL_STOP_SIGNAL (USR1) on to the child
# it waits for: srun forwards it to its step, and slurmstepd delivers it to every process of the step (the
# per-node wrapper, torchrun, the workers); the workers checkpoint at the next optimizer step and exit 0.
# Only USR1 asks for a requeue: TERM also comes from `scancel`, and a cancelled job must stay cancelled.
COTDISTILL_STOP_ASKED=""
COTDISTILL_REQUEUE_ASKED=""
COTDISTILL_TERMINATED=""
COTDISTILL_CHILD=""
COTDISTILL_STOP_SIGNAL=USR1
cotdistill_on_signal() {
    COTDISTILL_STOP_ASKED=1
    if [ "$1" = USR1 ]; then COTDISTILL_REQUEUE_ASKED=1; else COTDISTILL_TERMINATED=1; fi
    cotdistill_log "received SIG$1: passing SIG$COTDISTILL_STOP_SIGNAL on to the job (training saves a checkpoint)"
    if [ -n "$COTDISTILL_CHILD" ]; then kill -s "$COTDISTILL_STOP_SIGNAL" "$COTDISTILL_CHILD" 2>/dev/null; fi
}
cotdistill_trap_stops() {
    trap 'cotdistill_on_signal USR1' USR1
    trap 'cotdistill_on_signal TERM' TERM
}

# True when this job should requeue itself: USR1 came, REQUEUE is not 0, and no TERM came (TERM means
# `scancel` or the time limit itself; scontrol would requeue even a cancelled job).
cotdistill_should_requeue() {
    [ -n "$COTDISTILL_REQUEUE_ASKED" ] && [ "${REQUEUE:-1}" = 1 ] || return 1
    if [ -n "$COTDISTILL_TERMINATED" ]; then
        cotdistill_log "SIGTERM came too (scancel, or the time limit before the job stopped): not requeueing"
        return 1
    fi
}

# Wait for PID; its exit status in COTDISTILL_WAIT_RC. A trapped signal cuts `wait` short with a status > 128
# (the handler has done its work): wait again while PID lives. A child that died of a signal also reads > 128.
cotdistill_wait() {
    local pid=$1 rc again
    while :; do
        wait "$pid"
        rc=$?
        [ "$rc" -gt 128 ] || break
        if ! kill -0 "$pid" 2>/dev/null; then  # gone (a zombie still answers): rc may be the interruption's
            wait "$pid" 2>/dev/null
            again=$?
            [ "$again" -ne 127 ] && rc=$again  # 127: reaped by the first wait, whose status was the real one
            break
        fi
    done
    COTDISTILL_WAIT_RC=$rc
}

# Run a command in the background (so traps fire at once) and wait for it; its exit status in COTDISTILL_RC.
cotdistill_run() {
    "$@" &
    COTDISTILL_CHILD=$!
    cotdistill_wait "$COTDISTILL_CHILD"
    COTDISTILL_RC=$COTDISTILL_WAIT_RC
    COTDISTILL_CHILD=""
}

# Start `SCRIPT ARGS...` under torchrun on every node of the allocation (one srun task per node) and wait.
cotdistill_torchrun() {
    cotdistill_write_hostfile
    if [ -n "$COTDISTILL_STOP_ASKED" ]; then
        cotdistill_log "stop asked for before the launch: not starting"
        COTDISTILL_RC=0
        return
    fi
    cotdistill_log "launching $COTDISTILL_NODES node(s) x $GPUS_PER_NODE rank(s): $*"
    cotdistill_run srun --nodes="$COTDISTILL_NODES" --ntasks="$COTDISTILL_NODES" --ntasks-per-node=1 \
        --cpus-per-task="$COTDISTILL_CPUS_PER_NODE" --kill-on-bad-exit=1 \
        bash "$COTDISTILL_ROOT/slurm/common.sh" node "$@"
    cotdistill_log "srun exited $COTDISTILL_RC"
}

# Requeue this job (same job id, same OUTPUT_DIR: the trainer resumes from its newest complete checkpoint).
cotdistill_requeue() {
    cotdistill_log "not finished: requeueing job $SLURM_JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
    trap '' USR1 TERM  # the requeue ends this shell with TERM: nothing left to pass on
    if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
    cotdistill_log "scontrol requeue failed (job not requeueable, or being cancelled)"
    exit 1
}

# --- per node: the srun task ----------------------------------------------------------------------------------
# slurmstepd delivers a forwarded USR1 to every process of the step, and torchrun's agent would die of it (it
# handles only TERM/INT/HUP/QUIT, and handling means tearing the workers down). So torchrun starts with USR1
# ignored, which its workers inherit until they install their own handler (cotdistill.train.StopRequest) -
# a worker still starting up would otherwise be killed by a stop request. A USR1 that finds a worker without
# its handler is not lost: this wrapper watches /proc/<worker>/status (SigCgt) and sends USR1 to each worker
# once its handler is there, exactly once. TERM (scancel, time limit) reaches torchrun from slurmstepd itself;
# torchrun sends it on to the workers (also a stop request) and waits for them, and so does this wrapper.
cotdistill_catches_usr1() {  # PID: has the process a handler for USR1 (signal 10: bit 9 of SigCgt)?
    local mask
    mask=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$mask" ] && (( 0x$mask & 0x200 ))
}

cotdistill_node_main() {
    local node=${SLURMD_NODENAME:-$(hostname -s)} rank=${SLURM_NODEID:-0} addr=""
    if [ -n "${COTDISTILL_IFNAME:-}" ]; then
        addr=$(ip -4 -o addr show dev "$COTDISTILL_IFNAME" 2>/dev/null | awk '{print $4}' | head -1)
    fi
    local tmp=${COTDISTILL_JOB_TMP:-${TMPDIR:-/tmp}/cotdistill-${SLURM_JOB_ID:-$$}}/node$rank
    rm -rf "$tmp"
    mkdir -p "$tmp"
    export TORCH_EXTENSIONS_DIR=$tmp/torch_extensions
    local seed=${COTDISTILL_EXTENSIONS_SEED:-$HOME/.cache/cotdistill/torch_extensions}
    if [ -d "$seed" ]; then cp -a "$seed" "$TORCH_EXTENSIONS_DIR"; else mkdir -p "$TORCH_EXTENSIONS_DIR"; fi
    cotdistill_log "node $node node_rank=$rank/${SLURM_NNODES:-1} addr=${addr:-?}: torchrun" \
        "--nproc_per_node=${GPUS_PER_NODE:-1} --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT"
    trap '' USR1
    # TMPDIR: torchrun's torchelastic_* folders and the workers' temp files go to the job's folder, removed below.
    TMPDIR=$tmp "${PYTHON:-python3}" -m torch.distributed.run --nnodes="${SLURM_NNODES:-1}" --node_rank="$rank" \
        --nproc_per_node="${GPUS_PER_NODE:-1}" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
        --max_restarts=0 "$@" &
    local pid=$! rc worker stop="" told=" "
    trap 'stop=1' USR1
    trap ':' TERM  # slurmstepd sends TERM to torchrun too (a second one would cut its shutdown short): keep waiting
    while kill -0 "$pid" 2>/dev/null; do
        if [ -n "$stop" ]; then
            for worker in $(pgrep -P "$pid"); do
                if [[ $told != *" $worker "* ]] && cotdistill_catches_usr1 "$worker"; then
                    kill -USR1 "$worker" 2>/dev/null
                    told="$told$worker "
                fi
            done
        fi
        sleep 0.5 &
        wait $! 2>/dev/null
    done
    cotdistill_wait "$pid"
    rc=$COTDISTILL_WAIT_RC
    # First run without a compiled-ops cache: keep what this job compiled for the next ones.
    if [ "$rank" = 0 ] && [ ! -e "$seed" ] && [ -n "$(ls -A "$TORCH_EXTENSIONS_DIR" 2>/dev/null)" ]; then
        mkdir -p "$(dirname "$seed")" && cp -a "$TORCH_EXTENSIONS_DIR" "$seed.tmp.$$" \
            && { mv -T "$seed.tmp.$$" "$seed" 2>/dev/null || rm -rf "$seed.tmp.$$"; }
    fi
    rm -rf "$tmp"
    rmdir "$(dirname "$tmp")" 2>/dev/null
    cotdistill_log "node $node: torchrun exited $rc"
    return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = node ]; then
    shift
    cotdistill_node_main "$@"
    exit $?
fi
