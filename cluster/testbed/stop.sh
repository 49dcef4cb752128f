#!/usr/bin/env bash
# Stops the test cluster that start.sh started and removes its state (jobs, spool, config link).
#
#   bash cluster/testbed/stop.sh
#
# Logs stay in $LMC_SLURM_DIR/log (default /tmp/lmc-slurm/log) for a look afterwards. munged is
# stopped only if start.sh started it. Safe to call when nothing runs.
set -euo pipefail

dir=${LMC_SLURM_DIR:-/tmp/lmc-slurm}
marker='lmc-testbed: this marker line'
etc_conf=/etc/slurm/slurm.conf

say() { echo "stop.sh: $*" >&2; }

stop_pidfile() {
  # Sends SIGTERM to the daemon in pid file $1 and waits up to 10 s, then SIGKILL.
  local file=$1 name=$2 pid
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null && grep -qs "$name" "/proc/$pid/comm"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name ($pid) did not stop in 10 s; killing it."
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name ($pid)."
  fi
  rm -f "$file"
}

# Cancel the jobs first, so that no job step (slurmstepd and its tasks) outlives the daemons.
if [[ -s $dir/run/slurmctld.pid ]] && timeout 10 scontrol ping >/dev/null 2>&1; then
  jobs=$(timeout 10 squeue -h -t running,pending,suspended,completing -o %A 2>/dev/null || true)
  if [[ -n $jobs ]]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 150); do
      [[ -z $(timeout 10 squeue -h -t running,completing,configuring -o %A 2>/dev/null) ]] && break
      sleep 0.1
    done
  fi
fi
stop_pidfile "$dir/run/slurmd.pid" slurmd
stop_pidfile "$dir/run/slurmctld.pid" slurmctld
if [[ -f $dir/run/munged.started ]]; then
  stop_pidfile /run/munge/munged.pid munged
  rm -f "$dir/run/munged.started"
fi
if [[ -L $etc_conf ]] && grep -qs "$marker" "$etc_conf"; then
  rm -f "$etc_conf"
fi
rm -rf "${dir:?}/state" "${dir:?}/spool" "${dir:?}/run" "${dir:?}/dev" "${dir:?}/slurm.conf" \
  "${dir:?}/gres.conf"
say "the testbed is stopped (logs kept in $dir/log)."
