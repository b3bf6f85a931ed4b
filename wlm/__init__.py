"""The job lifecycle around Slurm: prolog, epilog (and later sshd, hostsfile, ccm, cgroups)."""
