"""Remote context: slurmstepd on each node (job steps and the batch script).

No Python hook runs here: a step's tasks start the launcher (``shifter``) themselves, and
what this context does is in the C shim, so that no task starts Python: ``--ccm`` tasks
enter the job's host-root container (``slurm_spank_task_init_privileged``) and the job's
extern step adopts the job's cgroup (``slurm_spank_task_post_fork``).
"""
