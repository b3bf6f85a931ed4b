#!/bin/bash
#SBATCH -N 3
#SBATCH --image=docker:test/debian:latest
# MPI as users write it: the image's MPICH, the site's default MPI plugin (pmi2).
srun -N 3 shifter /app/mpi-hello
