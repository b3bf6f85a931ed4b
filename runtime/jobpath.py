"""Where a job's prepared container lives on a node: the path rule the prolog, the epilog,
the Python launcher and the compiled launcher (runtime/launcher/launcher.c, ``job_udi``) share.
tests/data/contracts/job_udi.json runs through both.

For a job id J (decimal digits only; anything else has no prepared container)::

    <udiMount>.jobs/                a shared tmpfs anchor, root's, 0711 (one per node:
                                    each node's mount namespace has its own)
      J/                            root's, 0700, searchable by the job's user alone (ACL)
        root/                       the job's UDI (its tmpfs is mounted here)
        error                       a user's mistake the prolog found (see wlm.prolog)
    <loopMount>.jobs/               the same kind of anchor
      J/                            root's, 0700
        image/                      the job's image (squashfs, loop device)

Everything lives in the anchors' tmpfs, so it is per node even where nodes share a disk,
and vanishes with the node's namespace.  ``setupRoot`` run by hand keeps Shifter's
single UDI at ``udiMount`` itself.
"""

from __future__ import annotations

import os

SUFFIX = ".jobs"
MAX_JOB_ID = 20  # digits


def valid_job_id(job_id) -> bool:
    text = str(job_id) if job_id is not None else ""
    return 0 < len(text) <= MAX_JOB_ID and text.isascii() and text.isdigit()


def jobs_root(mount: str) -> str:
    return mount.rstrip("/") + SUFFIX


def job_dir(mount: str, job_id) -> str:
    if not valid_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return os.path.join(jobs_root(mount), str(job_id))


def udi(udi_mount: str, job_id) -> str:
    return os.path.join(job_dir(udi_mount, job_id), "root")


def loop(loop_mount: str, job_id) -> str:
    return os.path.join(job_dir(loop_mount, job_id), "image")


def error_file(udi_mount: str, job_id) -> str:
    return os.path.join(job_dir(udi_mount, job_id), "error")


def prepared_udi(udi_mount: str, environ) -> str | None:
    """The path of the job's UDI for a launcher with environment ``environ`` (its
    ``SLURM_JOB_ID``), or None outside a job."""
    job_id = environ.get("SLURM_JOB_ID", "")
    return udi(udi_mount, job_id) if valid_job_id(job_id) else None
