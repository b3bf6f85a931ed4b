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
limits.  Once validated, the options the job's steps inherit are rewritten to the
request (``rewrite_inherited_options``), so that a step that only inherits them is the
job's request byte for byte, which the C shim hands to the step without Python
(spank/shim_route.c, docs/spank.md).
"""

from __future__ import annotations

import os
import pwd
from shifter.frozen import frozen

from shifter.errors import ConfigError, UsageError
from shifter.gateway_client.resolve import resolve_id
from shifter.runtime import config as udiconfig
from shifter.runtime import envrequest as E
from shifter.runtime import volumes
from shifter.runtime.image import _ID_RE, ImageRef, parse_image
from shifter.runtime.modules import parse_list, select_modules
from shifter.spank.handle import SpankHandle
from shifter.spank.plugstack import PlugstackArgs


#: the variables through which Slurm hands a job's SPANK options to its steps: srun
#: inside the job reads ``SLURM_SPANK_<name>`` (the job-control environment) and salloc's
#: shell has ``<name>`` itself (``_SLURM_SPANK_OPTION_shifter_shifter_image`` etc. for --shifter.image with long_options)
OPTION_VARS = {name: (E.OPTION_PREFIX + name, E.OPTION_PREFIX + "shifter_" + name)
               for name in ("image", "volume", "module")}


@frozen
class JobRequest:
    image: ImageRef | None  # pinned: an id (or local) image
    volume: str | None
    module: str | None
    ccm: bool
    requested: str | None = None  # what the user asked for, e.g. docker:test/busybox:latest

    def control_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.image is not None:
            env[E.IMAGE] = self.image.tag
            env[E.IMAGETYPE] = self.image.type
        if self.requested is not None:
            env[E.IMAGEREQUEST] = self.requested
        if self.volume is not None:
            env[E.VOLUME] = self.volume
        if self.module is not None:
            env[E.MODULE] = self.module
        if self.ccm:
            env[E.CCM] = "1"
        return env

    def option_text(self) -> dict[str, str]:
        """The text each option of the job is rewritten to at submission, so that its
        steps inherit exactly the job's request (see ``rewrite_inherited_options``)."""
        out = {}
        if self.image is not None:
            out["image"] = str(self.image)
        if self.volume:  # '' (from ';') is kept as given: an empty --volume is refused
            out["volume"] = self.volume
        if self.module is not None:
            out["module"] = self.module
        return out


@frozen
class JobEnv:
    """The request of the job this srun runs in (``SLURM_SPANK_SHIFTER_*``), as the shim
    reads it (spank/shim_route.c, route_job_request): what a step may reuse unchecked."""

    image: str | None  # the pinned id, if the job's type is id and it is one
    request: str | None
    volume: str | None
    module: str | None

    @classmethod
    def of(cls, environ) -> "JobEnv | None":
        if not inside_allocation(environ):
            return None
        image = environ.get(E.JOB_IMAGE) or None
        if environ.get(E.JOB_IMAGETYPE) != "id" or image is None or not _ID_RE.match(image):
            image = None
        request = environ.get(E.JOB_IMAGEREQUEST) or environ.get(E.JOB_IMAGEREQUEST_OLD)
        return cls(image=image, request=request or None, volume=environ.get(E.JOB_VOLUME),
                   module=environ.get(E.JOB_MODULE))

    def pinned(self, requested: ImageRef) -> tuple[ImageRef, str] | None:
        """(the job's image, the job's request text) when a step asks for the job's image:
        by its pinned id (what the job's steps inherit) or by the job's request text (one
        lookup per job, and every step the same image).  Checked at submission: not again."""
        if self.image is None:
            return None
        if str(requested) == f"id:{self.image}":
            return ImageRef("id", self.image), self.request or str(requested)
        if self.request is not None and self.request == str(requested):
            return ImageRef("id", self.image), self.request
        return None


def parse_request(options: dict[str, str], plugstack: PlugstackArgs, environ=None,
                  warn=None, *, step: bool = False) -> JobRequest:
    """``step``: srun inside an allocation, whose job's own request (``JobEnv``) is reused."""
    environ = os.environ if environ is None else environ
    config = udiconfig.load(plugstack.shifter_config)
    job = JobEnv.of(environ) if step else None
    image = requested = None
    ccm = "ccm" in options
    if ccm:
        # a step of a --ccm job: the job's --ccm was checked at submission, as this user
        job_ccm = step and environ.get(E.JOB_CCM) == "1" and \
            environ.get(E.JOB_IMAGETYPE) == "local" and environ.get(E.JOB_IMAGE) == "/"
        if step and not job_ccm and "image" not in options:
            raise UsageError(f"--ccm can't be used in job {environ.get('SLURM_JOB_ID')}: it was submitted "
                             "without --ccm, so its nodes have no host-root container",
                             "submit the job with --ccm (sbatch --ccm, salloc --ccm)")
        check_ccm(options, config, plugstack, site_checked=job_ccm)
        image = CCM_IMAGE
    elif "image" in options:
        parsed = parse_image(options["image"], config)
        pinned = job.pinned(parsed) if job is not None else None
        if pinned is not None:
            image, requested = pinned
        else:
            requested = str(parsed)
            image = resolve_id(config, parsed)  # pinned once, at submission
            if parsed.type == "id" and os.path.isdir(config.imagePath):
                # the gateway answered for docker/custom tags (a private image of others
                # is "not found"); an id is checked against the image's files and ACL, as
                # the user.  Where this host does not see imagePath, the nodes check.
                # start-up: the builder (ctypes, ~10 ms) only when an id image is checked here
                from shifter.runtime.builder import udi

                udi.check_image_usable(config, parsed, os.getuid(), {os.getgid(), *os.getgroups()})
    volume = options.get("volume")
    if volume is not None and image is None:
        raise UsageError(
            f"--volume={volume!r} needs an image",
            "add --image=docker:REPO:TAG (volumes are mounted into the image)",
        )
    if volume is not None and not (job is not None and volume == job.volume):
        # (the job's own volumes, byte for byte, were checked at submission, as this user)
        if volume == "":  # as Shifter's plugin; ';' alone is a valid (empty) list of maps
            raise UsageError("invalid --volume '': the volume map is empty", "use --volume=/src:/dst[:ro]")
        maps = volumes.parse_volumes(volume, warn=warn)
        volumes.destination_conflicts(maps + config.siteFs)
        from shifter.runtime.builder import udi  # start-up: as above, only a job with --volume

        # sources readable by the user, per-node caches within the site's limits: what
        # setupRoot would refuse on every node, refused here (we run as the user)
        udi.check_user_volumes(config, maps, os.getuid())
        volume = volumes.format_volumes(maps)
    module = options.get("module")
    if module is not None and not (job is not None and module == job.module):
        if module.strip() == "":
            raise UsageError("invalid --module '': the module list is empty",
                             "use --module=NAME[,NAME] or --module=none")
        select_modules(config, parse_list(module))
    return JobRequest(image=image, volume=volume, module=module, ccm=ccm, requested=requested)


#: what a --ccm job runs in: the host's own root (Shifter's image "/" of type local)
CCM_IMAGE = ImageRef("local", "/")


def check_ccm(options: dict[str, str], config, plugstack: PlugstackArgs, site_checked: bool = False) -> None:
    """--ccm (cluster compatibility mode): the job's tasks run in a container of the
    host's own root, so it can't be combined with an image (Shifter refuses that too), and
    it needs the site's ``allowLocalChroot=1`` and, for its per-node sshd, ``enable_sshd=1``."""
    if "image" in options:
        raise UsageError(f"--ccm can't be used with --image={options['image']}: a --ccm job runs in the "
                         "host's own root, not in an image",
                         "drop --image, or drop --ccm to run in the image")
    if not config.allowLocalChroot and not site_checked:
        raise ConfigError("--ccm is not available on this system: udiRoot.conf has allowLocalChroot=0",
                          "the site enables it with allowLocalChroot=1 (and enable_ccm=1 in plugstack.conf)")
    if not plugstack.enable_sshd and not site_checked:
        raise ConfigError("--ccm is not available on this system: plugstack.conf has enable_ccm=1 but not "
                          "enable_sshd=1 (a --ccm job gets the per-node sshd)",
                          "the site adds enable_sshd=1 to the shifter line of plugstack.conf")


def rewrite_inherited_options(sp: SpankHandle, request: JobRequest, environ) -> None:
    """Rewrite the job's options, as its steps will inherit them, to the validated
    request: --image to the pinned ``id:<id>`` (Shifter does this too), --volume to the
    canonical maps, --module as given.  A step that only inherits them then carries
    exactly the job's request, byte for byte, and the shim handles it without Python.

    Slurm set each given option's variable in this process's environment (salloc's shell
    inherits it) and in the job-control environment (srun in the job reads it) before
    this hook; only those are rewritten."""
    for option, text in request.option_text().items():
        for name in OPTION_VARS[option]:
            if name in environ:
                environ[name] = text
                sp.job_control_setenv(name, text, True)


def submit(sp: SpankHandle, plugstack: PlugstackArgs, options: dict[str, str], *, required: bool,
           environ=None) -> JobRequest:
    """Validate the options and put the request into the job-control environment.

    ``required``: the control environment must take the values (sbatch/salloc, or an
    srun that creates its own allocation); inside an existing allocation it cannot.
    """
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    request = parse_request(options, plugstack, environ=environ, warn=warnings.append, step=not required)
    # A job's steps inherit its --volume: say it once, at submission, not at every srun
    # (the job's own text is not even parsed again; a job submitted before options were
    # rewritten hands its steps the text as typed, which gives the job's maps).
    job = None if required else JobEnv.of(environ)
    if not (job is not None and request.volume == job.volume):
        for line in warnings:
            sp.info(f"shifter: {line}")
    for name, value in request.control_env().items():
        if not sp.job_control_setenv(name, value, True) and required:
            raise ConfigError(f"can't hand {name} to the job: spank_job_control_setenv failed")
    if required:
        rewrite_inherited_options(sp, request, environ)
        if plugstack.enable_sshd and (request.image is not None or request.ccm):
            ensure_ssh_key()
    return request


def ensure_ssh_key() -> None:
    """With ``enable_sshd=1``: the submitting user's container key pair
    (``~/.udiRoot/id_rsa.key``), made now if missing; a home that does not allow it
    refuses the job (docs/sshd.md).  Root's jobs get no sshd, so no key."""
    from shifter.runtime.builder import sshd  # start-up: ~4 ms (base64, json, select), only with enable_sshd=1

    uid = os.getuid()
    if uid == 0:
        return
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        raise UsageError(f"can't create your container ssh key: uid {uid} has no home directory "
                         "in the user database") from None
    sshd.ensure_user_key(home)


def inside_allocation(environ=None) -> bool:
    return bool((os.environ if environ is None else environ).get("SLURM_JOB_ID"))
