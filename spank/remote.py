"""Remote context: slurmstepd on each node (job steps and the batch script).

Nothing to do yet: the launcher (``shifter``) enters the container from within the
step; per-step work (extern step, ccm) arrives with the Slurm-lifecycle work.
"""
