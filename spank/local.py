"""Local context: srun (as the user).

An srun that creates its own allocation hands the request to the prolog like sbatch
does; inside an existing allocation the options are still validated, so a typo is
refused before any task starts.  Either way the step's tasks get the request as
``SHIFTER_IMAGE``/``SHIFTER_IMAGETYPE`` (and ``SHIFTER_VOLUME``/``SHIFTER_MODULE``), so
``srun --image=X shifter CMD`` needs no second ``--image`` (Shifter's plugin does not do
this), and a step's ``--image`` overrides the job's.
"""

import os

from shifter.spank import request


def init_post_opt(sp, plugstack, options):
    req = request.submit(sp, plugstack, options, required=not request.inside_allocation())
    # srun's environment is what its tasks start from
    os.environ.update(req.control_env())
