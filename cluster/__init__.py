"""Running sweeps on a cluster: `cluster.slurm` submits runs as a Slurm job array.

`cluster/testbed/` starts a one-node Slurm on this machine for tests (`bash
cluster/testbed/start.sh`). Nothing here imports jax.
"""
