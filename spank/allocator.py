"""Allocator context: sbatch and salloc (as the submitting user)."""

from shifter.spank import request


def init_post_opt(sp, plugstack, options):
    request.submit(sp, plugstack, options, required=True)
