"""Running sweeps and sharded evaluations on a cluster: `cluster.slurm` submits runs as a Slurm
job array and defines the --slurm.* flags of the programs that submit (sweep.py,
eval_compress.py).

`cluster/testbed/` starts a one-node Slurm on this machine for tests (`bash
cluster/testbed/start.sh`). Nothing here imports jax.
"""
