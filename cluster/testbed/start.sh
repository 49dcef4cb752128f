#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine for tests (Debian, root, no systemd needed).
#
#   bash cluster/testbed/start.sh     # installs slurm-wlm and munge if missing, starts the daemons
#   bash cluster/testbed/stop.sh      # stops them and removes the cluster's state
#
# Runs munged, slurmctld and slurmd directly (no systemd), with state, pid files and logs under
# $LMC_SLURM_DIR (default /tmp/lmc-slurm), and links /etc/slurm/slurm.conf to the generated config
# so that sbatch, squeue, srun... work from any shell. Waits until the node is idle. A second call
# with the cluster up does nothing; a call after the daemons died (a reboot, a CI machine) starts
# them again with an empty queue.
#
# The node: the cores rounded up to 8 CPUs (so that two-task runs and two array tasks fit on a
# 2-core machine), 2 pretend GPUs (Slurm sets CUDA_VISIBLE_DEVICES per task; there is no device
# behind them), partitions `debug` (the default) and `urgent` (its jobs preempt those in `debug`:
# SIGTERM, then SIGKILL 20 s later, then requeue), a requeued job startable again after 6 s.
#
# Environment:
#   LMC_SLURM_DIR            state, logs and config (default /tmp/lmc-slurm)
#   LMC_SLURM_CPUS           CPUs the node declares (default: the cores, at least 8)
#   LMC_SLURM_GPUS           pretend GPUs the node declares (default 2; 0 for none)
#   LMC_SLURM_START_TIMEOUT  seconds to wait for the node to become idle (default 60)
#   LMC_SLURM_CRED_EXPIRE    job credential lifetime; a requeued job waits this + 1 s (default 5)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${LMC_SLURM_DIR:-/tmp/lmc-slurm}
timeout_s=${LMC_SLURM_START_TIMEOUT:-60}
marker='lmc-testbed: this marker line'
etc_conf=/etc/slurm/slurm.conf
t0=$SECONDS

say() { echo "start.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}

node_state() {
  # The node's state as sinfo prints it (idle, mix, alloc, down*, ...), or nothing if unreachable.
  timeout 10 sinfo -h -N -o '%t' 2>/dev/null | head -n 1 || true
}

cluster_up() {
  [[ -L $etc_conf && $(readlink "$etc_conf") == "$dir/slurm.conf" ]] || return 1
  command -v sinfo >/dev/null 2>&1 || return 1
  # `scontrol ping` fails at once when the controller is down; sinfo would retry for seconds.
  timeout 10 scontrol ping >/dev/null 2>&1 || return 1
  [[ $(node_state) =~ ^(idle|mix|mixed|alloc|allocated|comp|completing)$ ]]
}

install_packages() {
  local cmd missing=0
  for cmd in munged mungekey slurmctld slurmd sbatch srun; do
    command -v "$cmd" >/dev/null 2>&1 || missing=1
  done
  ((missing)) || return 0
  [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed, and installing them needs root."
  say "installing slurm-wlm and munge with apt-get ..."
  # Keep the packages' init scripts from starting daemons of their own during the install.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local status=0
  {
    apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
        slurm-wlm munge >/dev/null
  } || status=$?
  ((made_policy)) && rm -f "$policy"
  ((status == 0)) || die "apt-get could not install slurm-wlm and munge (exit $status)."
  say "installed $(dpkg-query -W -f='slurm-wlm ${Version}' slurm-wlm) and" \
    "$(dpkg-query -W -f='munge ${Version}' munge) in $((SECONDS - t0)) s"
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key --force
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  runuser -u munge -- munged
  : >"$dir/run/munged.started" # stop.sh stops munged only if this script started it
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged did not start; /var/log/munge/munged.log ends with:
$(tail -n 20 /var/log/munge/munged.log 2>/dev/null)"
}

write_config() {
  if [[ -e $etc_conf || -L $etc_conf ]] && ! grep -qs "$marker" "$etc_conf"; then
    die "$etc_conf exists and was not written by this script: is this a real cluster? Stopping."
  fi
  mkdir -p "$dir"/{state,spool,run,log,dev}
  local host cpus gpus mem_mb
  host=$(hostname -s)
  cpus=${LMC_SLURM_CPUS:-$(nproc)}
  ((cpus >= 8)) || [[ -n ${LMC_SLURM_CPUS:-} ]] || cpus=8
  gpus=${LMC_SLURM_GPUS:-2}
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  sed -e "s|@HOST@|$host|g" -e "s|@DIR@|$dir|g" -e "s|@CPUS@|$cpus|g" -e "s|@GPUS@|$gpus|g" \
    -e "s|@MEM_MB@|$mem_mb|g" -e "s|@CTLD_PORT@|6817|g" -e "s|@SLURMD_PORT@|6818|g" \
    -e "s|@CRED_EXPIRE@|${LMC_SLURM_CRED_EXPIRE:-5}|g" \
    "$here/slurm.conf.in" >"$dir/slurm.conf"
  if ((gpus > 0)); then
    for ((i = 0; i < gpus; i++)); do
      # Slurm wants character devices; these behave like /dev/null.
      [[ -c $dir/dev/gpu$i ]] || mknod -m 666 "$dir/dev/gpu$i" c 1 3
    done
    echo "NodeName=$host Name=gpu File=$dir/dev/gpu[0-$((gpus - 1))]" >"$dir/gres.conf"
  else
    sed -i -e 's/ Gres=gpu:0//' -e '/^GresTypes=/d' "$dir/slurm.conf"
    : >"$dir/gres.conf"
  fi
  mkdir -p /etc/slurm
  ln -sfn "$dir/slurm.conf" "$etc_conf"
}

pid_alive() {
  # Whether pid file $1 names a live process called $2 (a stale file may name a reused pid).
  [[ -s $1 ]] && grep -qsx "$2" "/proc/$(cat "$1")/comm"
}

log_tails() {
  for f in "$dir/log/slurmctld.log" "$dir/log/slurmd.log" /var/log/munge/munged.log; do
    echo "--- last lines of $f:"
    tail -n 15 "$f" 2>/dev/null || echo "(none)"
  done
}

for name in LMC_SLURM_CPUS LMC_SLURM_GPUS LMC_SLURM_CRED_EXPIRE LMC_SLURM_START_TIMEOUT; do
  [[ ${!name:-1} =~ ^[0-9]+$ ]] || die "$name must be a whole number, got '${!name}'."
done
if cluster_up; then
  say "the testbed is already up ($(sinfo -h -N -o '%N %t %c CPUs' | head -n 1)); nothing to do."
  exit 0
fi
install_packages
mkdir -p "$dir"/{state,spool,run,log,dev}
start_munge
write_config
if ! pid_alive "$dir/run/slurmctld.pid" slurmctld; then
  # A cold start (-c) forgets the jobs of an earlier run of the testbed: tests start clean.
  slurmctld -c -f "$dir/slurm.conf" || die "slurmctld did not start.
$(log_tails)"
fi
if ! pid_alive "$dir/run/slurmd.pid" slurmd; then
  slurmd -f "$dir/slurm.conf" || die "slurmd did not start.
$(log_tails)"
fi
deadline=$((SECONDS + timeout_s))
state=
while ((SECONDS < deadline)); do
  state=$(node_state)
  if [[ $state =~ ^(idle|mix|alloc|comp)$ ]]; then
    say "up in $((SECONDS - t0)) s: $(sinfo -h -N -o 'node %N %t, %c CPUs, gres %G' | head -n 1)," \
      "config $etc_conf -> $dir/slurm.conf"
    exit 0
  fi
  if [[ $state =~ ^(down|drain|drng|fail) ]]; then
    # A node left down by an earlier run of the daemons: the config says it is fine now.
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
  fi
  sleep 0.5
done
die "the node is not idle after ${timeout_s} s (state: '${state:-no answer}').
$(log_tails)"
