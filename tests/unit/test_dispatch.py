"""The dispatcher maps every outcome to 1 or -1 with one slurm_error line."""

import os

import pytest

from shifter.spank import dispatch
from shifter.spank.handle import CTX_ALLOCATOR, CTX_JOB_SCRIPT, CTX_LOCAL, CTX_REMOTE, CTX_SLURMD
from helpers.fake_spank import FakeSpank


ID = "ab" * 32


@pytest.fixture(autouse=True)
def fake_gateway(monkeypatch):
    """The gateway lookup is a seam here (tests/slurm pin through the real gateway)."""
    from shifter.runtime.image import ImageRef
    from shifter.spank import request

    def lookup(config, image):
        if image.tag.startswith("missing"):
            from shifter.errors import ShifterError
            raise ShifterError(f"image {image} not found", "shifterimg pull it first")
        return ImageRef("id", ID) if image.type == "docker" else image

    monkeypatch.setattr(request, "resolve_id", lookup)


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "udiRoot.conf"
    path.write_text("system=test\nimagePath=/images\nudiMount=/var/udiMount\nmodule_mpich_siteEnv=A=1\n")
    return f"shifter_config={path}"


def test_allocator_pins_request_in_job_control_env(conf, tmp_path):
    a, c = tmp_path / "a", tmp_path / "c"
    a.mkdir()
    c.write_text("x")
    sp = FakeSpank(CTX_ALLOCATOR)
    rc = dispatch.run(sp, "init_post_opt", [conf], {"image": "test/busybox", "volume": f"{a}:/b;{c}:/d:ro",
                                                     "module": "mpich"})
    assert rc == 1, sp.errors
    # Shifter's name for the request: SHIFTER_IMAGEREQUEST
    assert sp.control_env == {"SHIFTER_IMAGE": ID, "SHIFTER_IMAGETYPE": "id",
                              "SHIFTER_IMAGEREQUEST": "docker:test/busybox:latest",
                              "SHIFTER_VOLUME": f"{a}:/b;{c}:/d:ro", "SHIFTER_MODULE": "mpich"}


@pytest.mark.parametrize("source, why", [("/no/such/dir", "no such file or directory"),
                                         ("/dev/null", "not a directory or regular file")])
def test_unusable_volume_source_is_refused_at_submission(conf, source, why):
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "test/busybox", "volume": f"{source}:/data"}) == -1
    assert len(sp.errors) == 1 and sp.errors[0].startswith(f"shifter: can't mount volume source {source}: {why}")
    assert "(hint: " in sp.errors[0] and sp.control_env == {}


def test_per_node_cache_source_is_not_checked_but_its_size_is(tmp_path):
    path = tmp_path / "udiRoot.conf"
    path.write_text("system=test\nimagePath=/images\nudiMount=/var/udiMount\nperNodeCacheSizeLimit=1G\n")
    conf = f"shifter_config={path}"
    sp = FakeSpank(CTX_ALLOCATOR)
    ok = {"image": "test/busybox", "volume": "/no/such/dir:/cache:perNodeCache=size=1G"}
    assert dispatch.run(sp, "init_post_opt", [conf], ok) == 1, sp.errors
    sp = FakeSpank(CTX_LOCAL, env={})
    big = {"image": "test/busybox", "volume": "/no/such/dir:/cache:perNodeCache=size=2G"}
    assert dispatch.run(sp, "init_post_opt", [conf], big) == -1
    assert sp.errors == ["shifter: can't create the per-node cache at /cache: size 2147483648 bytes is over the "
                         "site limit of 1073741824 bytes (hint: ask for less (perNodeCache=size=...))"]


def test_unknown_image_is_refused_at_submission(conf):
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "missing/image:1"}) == -1
    assert sp.errors == ["shifter: image docker:missing/image:1 not found (hint: shifterimg pull it first)"]
    assert sp.control_env == {}


def test_bad_image_is_one_error_and_minus_one(conf):
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "docker:"}) == -1
    assert len(sp.errors) == 1 and sp.errors[0].startswith("shifter: invalid image 'docker:'")
    assert sp.control_env == {}


def test_volume_needs_image(conf):
    sp = FakeSpank(CTX_LOCAL, env={})
    assert dispatch.run(sp, "init_post_opt", [conf], {"volume": "/a:/b"}) == -1
    assert "needs an image" in sp.errors[0]


def test_missing_config_is_an_error_naming_the_path():
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", ["shifter_config=/no/such/udiRoot.conf"], {"image": "x:y"}) == -1
    assert "/no/such/udiRoot.conf" in sp.errors[0]


def test_bad_plugstack_argument_fails_every_hook():
    sp = FakeSpank(CTX_REMOTE)
    assert dispatch.run(sp, "user_init", ["nope=1"], {}) == -1
    assert "unknown argument 'nope'" in sp.errors[0]


def test_internal_error_is_never_success(conf, monkeypatch):
    from shifter.spank import request

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(request, "parse_request", boom)
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "x:y"}) == -1
    assert sp.errors == ["shifter: internal error in init_post_opt: RuntimeError: kaboom"]


def test_hooks_a_context_does_not_implement_succeed(conf):
    assert dispatch.run(FakeSpank(CTX_REMOTE), "task_init", [conf], {"image": "x:y"}) == 1
    assert dispatch.run(FakeSpank(CTX_SLURMD), "slurmd_exit", [conf], {}) == 1


def test_prolog_logs_job_node_and_image(conf, monkeypatch, tmp_path):
    from shifter.runtime import plandir

    monkeypatch.setattr(plandir, "TOP", str(tmp_path))  # not the machine's /var/lib
    monkeypatch.setattr(plandir, "ROOT_UID", os.getuid())
    from shifter.wlm import prolog

    prepared = []  # building the container is the slurm tier's (tests/slurm/test_lifecycle.py)
    monkeypatch.setattr(prolog, "prepare_container", lambda sp, plugstack, job, query: prepared.append((job.job_id, query)))
    monkeypatch.setattr(prolog, "start_allocation_query", lambda sp, job: f"query {job.job_id}")  # no scontrol here
    monkeypatch.setenv("SPANK_SHIFTER_IMAGE", ID)
    monkeypatch.setenv("SPANK_SHIFTER_IMAGETYPE", "id")
    monkeypatch.setenv("SPANK_SHIFTER_IMAGEREQUEST", "docker:test/busybox:latest")
    monkeypatch.setenv("SLURMD_NODENAME", "n7")
    sp = FakeSpank(CTX_JOB_SCRIPT, job_id=42)
    assert dispatch.run(sp, "job_prolog", [conf], {}) == 1
    assert prepared == [(42, "query 42")]  # the job's container is asked for, slurmctld asked first
    assert sp.infos == [f"shifter: prolog: job=42 node=n7 uid=4242 imagetype=id image={ID} "
                        "request=docker:test/busybox:latest"]
    # the old name (jobs submitted before the rename) is still read
    monkeypatch.delenv("SPANK_SHIFTER_IMAGEREQUEST")
    monkeypatch.setenv("SPANK_SHIFTER_IMAGE_REQUEST", "docker:test/old:latest")
    assert dispatch.run(sp, "job_prolog", [conf], {}) == 1
    assert sp.infos[-1].endswith("request=docker:test/old:latest")
    if os.getuid() == 0:  # the user's plan directory on the node (only root can give it away)
        assert os.stat(plandir.candidates(4242, plandir.hostname(), None)[0]).st_uid == 4242
    assert dispatch.run(sp, "job_epilog", [conf], {}) == 1
    assert sp.infos[-1].startswith("shifter: epilog: job=42 node=n7")


def test_steps_of_a_job_reuse_its_pinned_image(conf, monkeypatch):
    from shifter.spank import request

    def no_lookup(config, image):
        raise AssertionError("the gateway was asked again")

    monkeypatch.setattr(request, "resolve_id", no_lookup)
    for name in ("SHIFTER_IMAGE", "SHIFTER_IMAGETYPE", "SHIFTER_IMAGEREQUEST"):
        monkeypatch.setenv(name, "")  # srun's hook sets them: restored after the test
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_SPANK_SHIFTER_IMAGEREQUEST", "docker:test/busybox:latest")
    monkeypatch.setenv("SLURM_SPANK_SHIFTER_IMAGETYPE", "id")
    monkeypatch.setenv("SLURM_SPANK_SHIFTER_IMAGE", ID)
    sp = FakeSpank(CTX_LOCAL)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "docker:test/busybox"}) == 1, sp.errors
    import os

    assert os.environ["SHIFTER_IMAGE"] == ID and os.environ["SHIFTER_IMAGETYPE"] == "id"
    # a different image in a step is looked up
    sp = FakeSpank(CTX_LOCAL)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "docker:other/image"}) == -1
    assert "internal error" in sp.errors[0] or "asked again" in sp.errors[0]


def test_volume_warnings_reach_the_submitting_user_and_the_job_gets_the_canonical_maps(conf):
    """sbatch --volume=/global/cscratch1/sd/me/:/mnt:perNodeCache=size=50G:ro, as in
    Shifter job scripts: accepted (Shifter ignores ro on a cache), one info line on
    sbatch's stderr saying so, and the job gets the canonical text."""
    sp = FakeSpank(CTX_ALLOCATOR)
    rc = dispatch.run(sp, "init_post_opt", [conf], {
        "image": "test/busybox", "volume": "/global/cscratch1/sd/me/:/mnt:perNodeCache=size=50G:ro;/usr//lib/:/b"})
    assert rc == 1, sp.errors
    assert sp.control_env["SHIFTER_VOLUME"] == "/global/cscratch1/sd/me:/mnt:perNodeCache=size=50G;/usr/lib:/b"
    assert sp.infos == [
        "shifter: warning: volume map 1 '/global/cscratch1/sd/me/:/mnt:perNodeCache=size=50G:ro': 'ro' ignored: "
        "a per-node cache is a new, writable filesystem of its own, not a bind mount (Shifter ignores it too)"]
    assert sp.errors == []


def test_empty_volume_option_is_refused_but_an_empty_list_is_not(conf):
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "test/busybox", "volume": ""}) == -1
    assert "the volume map is empty" in sp.errors[0]
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "test/busybox", "volume": ";"}) == 1, sp.errors
    assert sp.control_env["SHIFTER_VOLUME"] == ""


def test_unexpanded_variable_in_a_volume_is_refused_at_submission(conf):
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "test/busybox", "volume": "/scratch/$USER/x:/x"}) == -1
    assert len(sp.errors) == 1 and "contains the character '$'" in sp.errors[0]
    assert "Slurm does not expand $VARIABLES in #SBATCH lines" in sp.errors[0]
    assert sp.control_env == {}


def test_steps_of_a_job_do_not_repeat_its_volume_warnings(conf, monkeypatch):
    """srun inside the job inherits sbatch's --volume (Slurm passes SPANK options on): the
    warnings were said at submission; a step with other volumes gets its own."""
    spec = "/x:/mnt:perNodeCache=size=1G:ro"
    job_env = {"SLURM_JOB_ID": "12", "SLURM_SPANK_SHIFTER_VOLUME": "/x:/mnt:perNodeCache=size=1G"}
    monkeypatch.setattr("os.environ", dict(job_env))
    sp = FakeSpank(CTX_LOCAL)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "test/busybox", "volume": spec}) == 1, sp.errors
    assert sp.infos == []
    monkeypatch.setattr("os.environ", dict(job_env))
    sp = FakeSpank(CTX_LOCAL)
    assert dispatch.run(sp, "init_post_opt", [conf], {"image": "test/busybox", "volume": spec + ";/usr:/z"}) == 1
    assert len(sp.infos) == 1 and "'ro' ignored" in sp.infos[0]


def test_steps_of_a_job_submitted_before_the_rename_reuse_its_pinned_image(conf, monkeypatch):
    from shifter.spank import request

    monkeypatch.setattr(request, "resolve_id", lambda config, image: pytest.fail("the gateway was asked again"))
    env = {"SLURM_SPANK_SHIFTER_IMAGE_REQUEST": "docker:test/busybox:latest", "SLURM_SPANK_SHIFTER_IMAGETYPE": "id",
           "SLURM_SPANK_SHIFTER_IMAGE": ID}
    from shifter.spank.plugstack import PlugstackArgs

    req = request.parse_request({"image": "docker:test/busybox"}, PlugstackArgs.parse([conf]),
                                environ={**env, "SLURM_JOB_ID": "3"}, step=True)
    assert str(req.image) == f"id:{ID}"


def test_submission_rewrites_the_options_its_steps_inherit_to_the_pinned_request(conf, tmp_path, monkeypatch):
    """Slurm hands a job's options to its steps (_SLURM_SPANK_OPTION_shifter_* in sbatch's
    environment and the job-control environment): after validation they carry the pinned
    id and the canonical maps, so a step that only inherits them is the job's request byte
    for byte (the shim then handles it without Python), as Shifter rewrites --image."""
    a = tmp_path / "a"
    a.mkdir()
    given = {"_SLURM_SPANK_OPTION_shifter_image": "test/busybox",
             "_SLURM_SPANK_OPTION_shifter_shifter_volume": f"{a}/:/b",  # --shifter.volume (long_options)
             "_SLURM_SPANK_OPTION_shifter_module": "mpich"}
    environ = {"PATH": "/usr/bin:/bin", **given}
    monkeypatch.setattr("os.environ", environ)
    sp = FakeSpank(CTX_ALLOCATOR)
    sp.control_env.update(given)
    options = {"image": "test/busybox", "volume": f"{a}/:/b", "module": "mpich"}
    assert dispatch.run(sp, "init_post_opt", [conf], options) == 1, sp.errors
    rewritten = {"_SLURM_SPANK_OPTION_shifter_image": f"id:{ID}",
                 "_SLURM_SPANK_OPTION_shifter_shifter_volume": f"{a}:/b",
                 "_SLURM_SPANK_OPTION_shifter_module": "mpich"}
    assert {k: environ[k] for k in given} == rewritten
    assert {k: sp.control_env[k] for k in given} == rewritten
    assert "_SLURM_SPANK_OPTION_shifter_volume" not in environ  # only what Slurm set
    # inside the job, a step is not a submission: nothing is rewritten
    environ = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "9", **given}
    monkeypatch.setattr("os.environ", environ)
    sp = FakeSpank(CTX_LOCAL)
    assert dispatch.run(sp, "init_post_opt", [conf], options) == 1, sp.errors
    assert {k: environ[k] for k in given} == given


# ------------------------------------------------------------------------------ --ccm
@pytest.fixture
def ccm_conf(tmp_path):
    path = tmp_path / "ccm-udiRoot.conf"
    path.write_text("system=test\nimagePath=/images\nallowLocalChroot=1\n")
    return f"shifter_config={path}"


def test_ccm_gives_the_job_the_host_root(ccm_conf):
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [ccm_conf, "enable_ccm=1", "enable_sshd=1"], {"ccm": ""}) == 1, sp.errors
    assert sp.control_env == {"SHIFTER_IMAGE": "/", "SHIFTER_IMAGETYPE": "local", "SHIFTER_CCM": "1"}


@pytest.mark.parametrize("args, conf_name, message", [
    (["enable_ccm=1"], "ccm_conf", "--ccm is not available on this system: plugstack.conf has enable_ccm=1 but "
                                   "not enable_sshd=1"),
    (["enable_ccm=1", "enable_sshd=1"], "conf", "--ccm is not available on this system: udiRoot.conf has "
                                                "allowLocalChroot=0"),
])
def test_ccm_needs_the_sites_settings(request, args, conf_name, message):
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [request.getfixturevalue(conf_name), *args], {"ccm": ""}) == -1
    assert len(sp.errors) == 1 and sp.errors[0].startswith(f"shifter: {message}") and "(hint: " in sp.errors[0]
    assert sp.control_env == {}
