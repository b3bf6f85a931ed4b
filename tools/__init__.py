"""The local site: a real Slurm cluster, munge, registries and test images on one machine."""
