"""The request in the environment: the names of the variables that carry shifter's
request and which one wins.  The one owner of this contract: Python reads the names
and the rule here; the compiled launcher (runtime/launcher/envrequest.c, the rule in C) and
the SPANK shim (spank/shim_route.c) take the names from ``shifter_contracts.h``, which the
build writes from this file (``shifter.runtime.contract_header``), and the rule is
checked on both sides against tests/data/contracts/image_request.json.

Where each name is seen:

- ``SHIFTER_*`` (``IMAGE``, ``IMAGETYPE``, ...): what the user sets for ``shifter CMD``,
  and what the plugin hands a step's tasks (srun's environment);
- ``SLURM_SPANK_SHIFTER_*``: the job's request, as the batch script and srun see the
  job-control environment the plugin set at submission;
- ``SPANK_SHIFTER_*``: the same, as the prolog and epilog see it;
- ``_SLURM_SPANK_OPTION_shifter_<option>``: the value of a SPANK option as Slurm hands
  it to the job's steps (``..._shifter_shifter_<option>`` with ``long_options``).

Only literal constants at the top level: the build reads them without importing
this module.  It imports nothing at start-up: the prolog reads its names.
"""

from __future__ import annotations


# what the caller (user or step) asks for
IMAGE = "SHIFTER_IMAGE"
IMAGETYPE = "SHIFTER_IMAGETYPE"
IMAGEREQUEST = "SHIFTER_IMAGEREQUEST"  # what the user asked for (e.g. docker:repo:tag): Shifter's name
IMAGEREQUEST_OLD = "SHIFTER_IMAGE_REQUEST"  # this project's old name for it, still read
VOLUME = "SHIFTER_VOLUME"
MODULE = "SHIFTER_MODULE"
CCM = "SHIFTER_CCM"
CONFIG = "SHIFTER_CONFIG"  # udiRoot.conf to read (else the plugstack's or <prefix>/etc/udiRoot.conf)

# the job's request in the batch script and its steps (the job-control environment)
JOB_IMAGE = "SLURM_SPANK_SHIFTER_IMAGE"
JOB_IMAGETYPE = "SLURM_SPANK_SHIFTER_IMAGETYPE"
JOB_IMAGEREQUEST = "SLURM_SPANK_SHIFTER_IMAGEREQUEST"
JOB_IMAGEREQUEST_OLD = "SLURM_SPANK_SHIFTER_IMAGE_REQUEST"  # this project's old name, still read
JOB_VOLUME = "SLURM_SPANK_SHIFTER_VOLUME"
JOB_MODULE = "SLURM_SPANK_SHIFTER_MODULE"
JOB_CCM = "SLURM_SPANK_SHIFTER_CCM"

# the job's request in the prolog and epilog
PROLOG_PREFIX = "SPANK_"

# the value of a SPANK option as the job's steps inherit it (+ the option's name;
# + "shifter_" + the option's name with long_options)
OPTION_PREFIX = "_SLURM_SPANK_OPTION_shifter_"

#: Fallbacks for the image, used only when neither SHIFTER_IMAGE nor SLURM_SPANK_SHIFTER_IMAGE
#: is set, in this order: Shifter's request variable (as the plugin hands it to the job),
#: this project's old name for it, and old Shifter's ``SHIFTER=TYPE:SPEC``.
FALLBACK_IMAGE_VARS = ("SHIFTER_IMAGEREQUEST", "SLURM_SPANK_SHIFTER_IMAGEREQUEST",
                       "SHIFTER_IMAGE_REQUEST", "SLURM_SPANK_SHIFTER_IMAGE_REQUEST",
                       "SHIFTER", "SLURM_SPANK_SHIFTER")

#: the (caller's, job's) pairs for the image, in order of precedence
IMAGE_PAIRS = (("SHIFTER_IMAGE", "SHIFTER_IMAGETYPE"), ("SLURM_SPANK_SHIFTER_IMAGE", "SLURM_SPANK_SHIFTER_IMAGETYPE"))

_HEX = frozenset("0123456789abcdef")


def _is_id(tag: str) -> bool:
    return len(tag) == 64 and _HEX.issuperset(tag)


def first_set(env, *names):
    """The value of the first of ``names`` set in ``env`` (even empty), else None."""
    for name in names:
        if env.get(name) is not None:
            return env[name]
    return None


def env_image_spec(env) -> str | None:
    """The image the environment requests, as a descriptor (docs/launcher.md, "Which
    image"; the compiled launcher's ``env_image_request`` is the same rule):

    1. ``SHIFTER_IMAGE`` (non-empty): ``SHIFTER_IMAGETYPE:SHIFTER_IMAGE`` when the type
       is set too, else ``SHIFTER_IMAGE`` itself as a descriptor (``id:<hex>``,
       ``docker:repo:tag``; without a type prefix, the site's defaultImageType).  A type
       ``id`` with an image that is not 64 hex digits can't be a pair: the image is then
       read alone, as a descriptor (a step's tasks carry the job's ``SHIFTER_IMAGETYPE=id``;
       ``SHIFTER_IMAGE=id:<B>`` or ``docker:...`` there is the user's own request);
    2. else the job's ``SLURM_SPANK_SHIFTER_IMAGE`` likewise with ``..._IMAGETYPE``;
    3. else the first non-empty of ``FALLBACK_IMAGE_VARS``, as a descriptor.
    """
    for name, type_name in IMAGE_PAIRS:
        tag, itype = env.get(name), env.get(type_name)
        if tag:
            if itype and not (itype == "id" and not _is_id(tag)):
                return f"{itype}:{tag}"
            return tag
    for name in FALLBACK_IMAGE_VARS:
        if env.get(name):
            return env[name]
    return None


def env_volume(env) -> str | None:
    """The volume text: ``SHIFTER_VOLUME`` if set (even empty), else the job's."""
    return first_set(env, VOLUME, JOB_VOLUME)


def env_module(env) -> str | None:
    """The module text as given: ``SHIFTER_MODULE`` if set (even empty), else the job's;
    None: the site's defaultModules."""
    return first_set(env, MODULE, JOB_MODULE)


def env_request(env) -> dict:
    """What ``shifter CMD`` (no option) takes from the environment: the image descriptor,
    the volume text and the normalised module list (None: the site's defaultModules).
    Raises ``UsageError`` for a module list the launcher refuses.  The compiled launcher
    prints the same with SHIFTER_LAUNCHER_PRINT_REQUEST=1."""
    # start-up: the prolog imports this module for its names alone (no re, no modules)
    from shifter.runtime.modules import normalize

    module = env_module(env)
    return {"image": env_image_spec(env), "volume": env_volume(env),
            "modules": None if module is None else normalize(module)}
