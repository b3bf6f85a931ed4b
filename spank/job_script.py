"""Job-script context: the job's prolog and epilog on every node (as root)."""

from shifter.wlm import epilog, prolog


def job_prolog(sp, plugstack, options):
    prolog.run(sp, plugstack, options)


def job_epilog(sp, plugstack, options):
    epilog.run(sp, plugstack, options)
