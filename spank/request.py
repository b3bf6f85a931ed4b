"""What a job asks of shifter, checked at submission and handed to the nodes.

At submission (sbatch/salloc: allocator context; srun creating its own allocation:
local context) the options are parsed and validated, and the result travels to every
node's prolog/epilog through Slurm's job-control environment:

  SHIFTER_IMAGE      the image, pinned: its 64-hex id (docker tags are looked up at the
                     image gateway once, here, as Shifter does)
  SHIFTER_IMAGETYPE  its type (``id``; ``local`` for local images)
  SHIFTER_IMAGEREQUEST  what the user asked for (e.g. ``docker:test/busybox:latest``),
                     Shifter's name (this project called it ``SHIFTER_IMAGE_REQUEST``
                     before; that name is still read)
  SHIFTER_VOLUME     the --volume maps, ';'-separated
  SHIFTER_MODULE     the --module value
  SHIFTER_CCM        1 with --ccm

(the prolog sees them as ``SPANK_SHIFTER_*``, the batch script as ``SLURM_SPANK_SHIFTER_*``).
A user's mistake is refused here, with one line, so no node ever sees it: a malformed
value, an image the gateway does not have for them, an ``id:`` image whose files or ACL
they may not use, a volume source they can't read, a per-node cache over the site's
limits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shifter.errors import ConfigError, UsageError
from shifter.runtime import config as udiconfig
from shifter.runtime import volumes
from shifter.runtime.image import ImageRef, parse_image, resolve_id
from shifter.runtime.modules import parse_list, select_modules
from shifter.spank.handle import SpankHandle
from shifter.spank.plugstack import PlugstackArgs


@dataclass(frozen=True)
class JobRequest:
    image: ImageRef | None  # pinned: an id (or local) image
    volume: str | None
    module: str | None
    ccm: bool
    requested: ImageRef | None = None  # what the user asked for, e.g. docker:repo:tag

    def control_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.image is not None:
            env["SHIFTER_IMAGE"] = self.image.tag
            env["SHIFTER_IMAGETYPE"] = self.image.type
        if self.requested is not None:
            env["SHIFTER_IMAGEREQUEST"] = str(self.requested)
        if self.volume is not None:
            env["SHIFTER_VOLUME"] = self.volume
        if self.module is not None:
            env["SHIFTER_MODULE"] = self.module
        if self.ccm:
            env["SHIFTER_CCM"] = "1"
        return env


def _pinned_by_job(requested: ImageRef, environ) -> ImageRef | None:
    """Inside a job submitted with the same --image (its steps' srun inherit the option),
    reuse the job's pinned id: one lookup per job, and every step the same image."""
    job_request = environ.get("SLURM_SPANK_SHIFTER_IMAGEREQUEST") or environ.get("SLURM_SPANK_SHIFTER_IMAGE_REQUEST")
    if (job_request == str(requested)
            and environ.get("SLURM_SPANK_SHIFTER_IMAGETYPE") == "id" and environ.get("SLURM_SPANK_SHIFTER_IMAGE")):
        return parse_image("id:" + environ["SLURM_SPANK_SHIFTER_IMAGE"])
    return None


def parse_request(options: dict[str, str], plugstack: PlugstackArgs, environ=os.environ,
                  warn=None) -> JobRequest:
    config = udiconfig.load(plugstack.shifter_config)
    image = requested = None
    if "image" in options:
        requested = parse_image(options["image"], config)
        # pinned once, at submission
        image = _pinned_by_job(requested, environ) or resolve_id(config, requested)
        if requested.type == "id" and os.path.isdir(config.imagePath):
            # the gateway answered for docker/custom tags (a private image of others is
            # "not found"); an id is checked against the image's files and ACL, as the
            # user.  Where this host does not see imagePath, the nodes check.
            from shifter.runtime import udi

            udi.check_image_usable(config, requested, os.getuid(), {os.getgid(), *os.getgroups()})
    volume = options.get("volume")
    if volume is not None and image is None:
        raise UsageError(
            f"--volume={volume!r} needs an image",
            "add --image=docker:REPO:TAG (volumes are mounted into the image)",
        )
    if volume is not None:
        if volume == "":  # as Shifter's plugin; ';' alone is a valid (empty) list of maps
            raise UsageError("invalid --volume '': the volume map is empty", "use --volume=/src:/dst[:ro]")
        maps = volumes.parse_volumes(volume, warn=warn)
        volumes.destination_conflicts(maps + config.siteFs)
        from shifter.runtime import udi

        # sources readable by the user, per-node caches within the site's limits: what
        # setupRoot would refuse on every node, refused here (we run as the user)
        udi.check_user_volumes(config, maps, os.getuid())
        volume = volumes.format_volumes(maps)
    module = options.get("module")
    if module is not None:
        if module.strip() == "":
            raise UsageError("invalid --module '': the module list is empty",
                             "use --module=NAME[,NAME] or --module=none")
        select_modules(config, parse_list(module))
    return JobRequest(image=image, volume=volume, module=module, ccm="ccm" in options, requested=requested)


def submit(sp: SpankHandle, plugstack: PlugstackArgs, options: dict[str, str], *, required: bool) -> JobRequest:
    """Validate the options and put the request into the job-control environment.

    ``required``: the control environment must take the values (sbatch/salloc, or an
    srun that creates its own allocation); inside an existing allocation it cannot.
    """
    warnings: list[str] = []
    request = parse_request(options, plugstack, warn=warnings.append)
    # A job's steps inherit its --volume: say it once, at submission, not at every srun.
    if not (inside_allocation(os.environ) and request.volume == os.environ.get("SLURM_SPANK_SHIFTER_VOLUME")):
        for line in warnings:
            sp.info(f"shifter: {line}")
    for name, value in request.control_env().items():
        if not sp.job_control_setenv(name, value, True) and required:
            raise ConfigError(f"can't hand {name} to the job: spank_job_control_setenv failed")
    return request


def inside_allocation(environ=os.environ) -> bool:
    return bool(environ.get("SLURM_JOB_ID"))
