"""The job prolog on every node of the allocation (root, PrologFlags=Alloc).

For a job with an image it builds the job's container on the node (``prepare_container``).
Policy: raise (-> -1 -> Slurm drains the node) only for a site fault, after draining the
node with a reason naming shifter; a problem caused by the user is cleaned up, recorded
for the job's own steps to report, and the prolog succeeds.

Every image job's container gets ``/var/hostsfile`` (the job's nodes, one line per CPU:
``scontrol show job`` is asked at the start and read when needed).  With
``enable_sshd=1`` a node-exclusive job's container also gets the job's sshd
(``shifter.runtime.builder.sshd``, docs/sshd.md), started once the container is ready.

It makes the job user's plan directory on the node (``shifter.runtime.plandir``:
``/var/lib/shifter/users/<node>/<uid>``), where their private plans and the rendezvous
of their shared user namespace live.  It is kept after the job (the epilog leaves it):
the user's tasks in other jobs and outside jobs on the node share it.  A failure there
is logged and does not drain the node: the user's tasks use their home directory's.
"""

from __future__ import annotations

import os
import pwd
import time

from shifter.errors import ShifterError, UsageError
from shifter.wlm import hookcpu, jobinfo


_started: float | None = None  # when the hook began (the "prolog done in" line)


def run(sp, plugstack, options) -> None:
    global _started
    _started = time.perf_counter()
    job = jobinfo.from_spank(sp, options)
    image_job = bool(job.image and job.image_type and job.uid is not None and job.gid is not None)
    # first: slurmctld's answer arrives while this process imports the runtime
    query = start_allocation_query(sp, job) if image_job and job.job_id is not None else None
    sp.info(f"shifter: prolog: {job.describe()}")
    make_plan_dir(sp, job)
    if image_job:
        enter_cgroup(sp, plugstack, job)
        prepare_container(sp, plugstack, job, query)
        # The job's sshd (enable_sshd=1) is spawned by this process during the container's
        # setup, so it is in the job's cgroup (enter_cgroup) and, with extern_cgroup=1,
        # adopted into the job's extern step; the epilog kills it (docs/sshd.md).


def enter_cgroup(sp, plugstack, job: jobinfo.JobInfo) -> None:
    """With ``memory_cgroup``: make the job's cgroup on this node and move this process
    into it, so the container's setup and whatever it leaves running (the sshd) are there;
    the epilog kills them all (``shifter.wlm.cgroup``).  Failing to is a site fault."""
    from shifter.wlm import cgroup  # start-up: re and signal (~12 ms), image jobs only (see _prepare)

    try:
        cg = cgroup.for_job(plugstack, job)
        if cg is None:
            return
        cg.create()
        cg.join()
    except (ShifterError, OSError, ValueError) as e:
        fault(sp, job, f"the job's cgroup: {e}")
        raise
    sp.info(f"shifter: prolog: job={job.job_id} node={job.node}: in cgroup {cg.path}")


def prepare_container(sp, plugstack, job: jobinfo.JobInfo, query=None) -> None:
    """Build the job's UDI on this node (``udi.setup_root`` in this process, at the job's
    path of ``jobpath``).  A user's mistake found here (a volume source gone since
    submission, an image no longer theirs) is recorded for the job's steps and does not
    drain the node; anything else is a site fault: the node is drained with a reason that
    names shifter and the cause, and the error returned.  ``query`` is the allocation
    query run() started (``jobinfo.query_allocation``), or None."""
    from shifter.runtime import jobpath  # start-up: image jobs only (see _prepare)

    where = f"job={job.job_id} node={job.node}"
    if not jobpath.valid_job_id(job.job_id):
        sp.error(f"shifter: prolog: {where}: not a job id a container can be prepared for")
        finish_allocation_query(sp, job, query)
        return
    try:
        _prepare(sp, plugstack, job, query, where)
    finally:  # reaped on every path
        if query is not None and not query.collected:
            finish_allocation_query(sp, job, query)


def _prepare(sp, plugstack, job: jobinfo.JobInfo, query, where: str) -> None:
    # start-up: the runtime (~25 ms cold) is imported by image jobs alone (the prolog runs for
    # every job), and after run() started the allocation query: slurmctld answers meanwhile
    from shifter.runtime import config as udiconfig
    from shifter.runtime import etcfiles, hostsfile, volumes
    from shifter.runtime.builder import sshd, udi
    from shifter.runtime.image import ImageRef
    from shifter.runtime.modules import parse_list

    try:
        config = udiconfig.load(plugstack.shifter_config)
    except ShifterError as e:
        fault(sp, job, f"the site configuration: {e}")
        raise
    log = lambda m: sp.info(f"shifter: prolog: {where}: {m} ({hookcpu.cpu_time()})")  # noqa: E731
    try:
        try:
            pw = pwd.getpwuid(job.uid)
        except KeyError:
            raise UsageError(f"uid {job.uid} has no entry in the user database of node {job.node}") from None
        username = pw.pw_name
        gids = tuple(etcfiles.user_groups(username, job.gid, config.maxGroupCount))
        alloc = finish_allocation_query(sp, job, query)
        ssh = sshd_setup(sp, plugstack, config, job, pw, gids, alloc)
        req = udi.Request(
            image=ImageRef(job.image_type, job.image), uid=job.uid, gid=job.gid, username=username,
            volumes=volumes.parse_volumes(job.volume or ""),
            modules=parse_list(job.module) if job.module is not None else None, job_id=str(job.job_id),
            hostlist=hostsfile.format_option(alloc.hosts) if alloc else None, gids=gids, sshd=ssh)
        udi.setup_root(config, req, log=log, job=True)
    except UsageError as e:
        sp.error(f"shifter: prolog: {where}: the job's container was not prepared: {e}")
        record_error(config, job, e)
        return
    except (ShifterError, OSError) as e:
        fault(sp, job, str(e))
        raise
    if ssh is not None:  # setupRoot spawned it: wait until it listens
        try:
            pid = sshd.spawned_pid(ssh.state_dir)
            if pid is None:
                raise ShifterError("it was not started (no pid file)")
            sshd.wait_ready(ssh.state_dir, pid, ssh.address, ssh.port)
        except (ShifterError, OSError) as e:
            udi.teardown_job(config, job.job_id, log=log)
            fault(sp, job, f"the job's sshd: {e}")
            raise
        log(f"sshd (pid {pid}) listening on {ssh.address}:{ssh.port}")
        udi.fault_point(config, "after-sshd")
    if _started is not None:  # what benchmarks/lifecycle --sshd reads
        log(f"prolog done in {time.perf_counter() - _started:.4f} s")


def start_allocation_query(sp, job: jobinfo.JobInfo):
    """Ask slurmctld for the job's nodes and CPUs (``jobinfo.query_allocation``) without
    waiting; None (logged: no /var/hostsfile, no sshd, the job still runs) if it can't."""
    try:
        return jobinfo.query_allocation(job.job_id)
    except OSError as e:
        sp.error(f"shifter: prolog: job={job.job_id} node={job.node}: can't ask for the job's nodes "
                 f"(no /var/hostsfile, no sshd): {e}")
        return None


def finish_allocation_query(sp, job: jobinfo.JobInfo, query):
    """The job's allocation, or None (logged: the container gets no /var/hostsfile and
    no sshd, the job still runs)."""
    if query is None:
        return None
    try:
        return jobinfo.read_allocation(query)
    except ShifterError as e:
        sp.error(f"shifter: prolog: job={job.job_id} node={job.node}: can't read the job's nodes "
                 f"(no /var/hostsfile, no sshd): {e}")
        return None


def sshd_setup(sp, plugstack, config, job: jobinfo.JobInfo, pw, gids, alloc):
    """What the container needs for the job's sshd, or None: not enabled, root's job, a
    job that shares its nodes (said in the log), or the user's key unreadable (said in the
    log: the job runs without sshd).  A bundle or name resolution problem is the site's."""
    from shifter.runtime.builder import sshd  # start-up: as in _prepare (which imported it already)

    where = f"job={job.job_id} node={job.node}"
    if not plugstack.enable_sshd or job.uid == 0 or alloc is None:
        return None
    if not alloc.exclusive:
        sp.info(f"shifter: prolog: {where}: no sshd: the job shares its nodes (sshd is for --exclusive jobs)")
        return None
    try:
        pubkey = sshd.read_user_pubkey(pw.pw_dir, job.uid, job.gid, gids)
    except UsageError as e:
        sp.error(f"shifter: prolog: {where}: no sshd for the job: {e}")
        return None
    from shifter.runtime import jobpath  # start-up: as in _prepare

    return sshd.Setup(bundle=sshd.bundle(config.sshdPort), pubkey=pubkey, address=sshd.node_address(job.node),
                      allowed=tuple(dict.fromkeys(sshd.node_address(h) for h, _ in alloc.hosts)),
                      port=config.sshdPort, state_dir=jobpath.job_dir(config.udiMount, job.job_id),
                      username=pw.pw_name)


def record_error(config, job: jobinfo.JobInfo, error: ShifterError) -> None:
    """Keep the user's mistake where the job's steps find it (``jobpath.error_file``):
    root's, readable by the job's user alone.  Every ``srun shifter`` of the job's own
    request prints it and fails: the file holds ``str(error)`` (``what (hint: ...)``,
    ``shifter.errors.describe``), which both launchers print after ``shifter: ``, the
    line every command prints for an error (``shifter.errors.line``)."""
    message = str(error)
    # start-up: as in _prepare (after a user's mistake, which _prepare's imports precede)
    from shifter import files
    from shifter.runtime import jobpath
    from shifter.runtime.builder import udi

    udi.prepare_job_dirs(config, job.job_id, job.uid)
    path = jobpath.error_file(config.udiMount, job.job_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, message.replace("\n", " ").encode(errors="replace") + b"\n")
        files.set_acl(fd, 0o600, uids=(job.uid,) if job.uid else ())
    finally:
        os.close(fd)


def fault(sp, job: jobinfo.JobInfo, cause: str) -> None:
    """A site fault: log it with job and node, and drain the node with a reason naming
    shifter and the cause (before Slurm's own "Prolog error" reason would be set)."""
    import subprocess  # start-up: ~6 ms, paid only by a site fault

    reason = f"shifter: {cause}"[:200]
    sp.error(f"shifter: prolog: job={job.job_id} node={job.node}: site fault, draining the node: {cause}")
    try:
        subprocess.run(["scontrol", "update", f"nodename={job.node}", "state=drain", f"reason={reason}"],
                       capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        sp.error(f"shifter: prolog: can't drain {job.node}: {e}")


def make_plan_dir(sp, job: jobinfo.JobInfo) -> None:
    # start-up: spank.job_script imports this module beside the epilog, which must not pay it
    from shifter.runtime import plandir

    if job.uid is None or job.gid is None:
        return
    try:
        plandir.prepare(job.uid, job.gid)
    except (ShifterError, OSError) as e:
        sp.error(f"shifter: prolog: {e}")
