"""Local context: srun (as the user).

An srun that creates its own allocation hands the request to the prolog like sbatch
does; inside an existing allocation the options are still validated, so a typo is
refused before any task starts.
"""

from shifter.spank import request


def init_post_opt(sp, plugstack, options):
    request.submit(sp, plugstack, options, required=not request.inside_allocation())
