#!/bin/bash
#SBATCH -N 2
#SBATCH --image=docker:test/debian:latest
#SBATCH --volume=/scratch/sftest1/in:/input;/scratch/sftest1/out:/output;/scratch/sftest1/cache:/tmp:perNodeCache=size=1G
# Shifter's standard job: every node's prolog prepares the container (the image, two
# volumes, an XFS per-node cache on /tmp); each step enters it.  Paths are literal:
# Slurm does not expand $USER in #SBATCH lines.
srun -N 2 shifter sh -c 'echo "$(hostname): $(cat /input/greeting), /tmp is $(stat -f -c %T /tmp)"; touch /output/$(hostname)'
