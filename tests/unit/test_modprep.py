"""shifter-admin module prepare (shifter.runtime.siteprep.modprep, elfdeps), the per-GPU device
rule (shifter.runtime.devices) and the module keys they write (config, plan)."""

import json
import os
import subprocess
import sys

import pytest

from shifter import paths, templates
from shifter.errors import ConfigError, UsageError
from shifter.runtime import config, devices, plan
from shifter.runtime.siteprep import elfdeps, modprep
from helpers.prereq import require

MPICH = "/usr/lib/x86_64-linux-gnu/libmpich.so.12"
ADMIN = os.path.join(paths.PREFIX, "bin", "shifter-admin")
STANDIN = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "gpu_standin.c")


def _cc(*argv):
    subprocess.run(["gcc", "-O0", *argv], check=True, capture_output=True)


def _fake_lib(tmp_path, soname, filename=None, needs=()):
    """A tiny shared library with the given soname (and DT_NEEDED entries)."""
    src = tmp_path / "fake.c"
    src.write_text("int fake_symbol(void) { return 1; }\n")
    out = tmp_path / (filename or soname)
    _cc("-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(out), str(src), "-Wl,--no-as-needed", *needs)
    return str(out)


def _admin(*args):
    return subprocess.run([ADMIN, *args], capture_output=True, text=True)


# --------------------------------------------------------------------------- ELF
def test_elf_reader_gives_soname_and_needed():
    require(os.path.exists(MPICH), "Debian's libmpich12 is not installed (tools/cluster installs it)")
    elf = elfdeps.read(MPICH)
    assert elf.soname == "libmpich.so.12"
    assert "libc.so.6" in elf.needed and "libucp.so.0" in elf.needed


def test_closure_leaves_glibc_and_the_cxx_runtime_to_the_image():
    require(os.path.exists(MPICH), "Debian's libmpich12 is not installed")
    libs = elfdeps.closure([MPICH], elfdeps.ldconfig_cache())
    assert {"libmpich.so.12", "libucp.so.0", "libucs.so.0", "libhwloc.so.15"} <= set(libs)
    for kept in ("libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2", "libstdc++.so.6", "libgcc_s.so.1"):
        assert kept not in libs


def test_closure_names_a_missing_library_and_who_needs_it(tmp_path):
    dep = _fake_lib(tmp_path, "libshifterdep.so.7")
    top = _fake_lib(tmp_path, "libshiftertop.so.1", needs=(dep,))
    os.unlink(dep)
    with pytest.raises(UsageError) as exc:
        elfdeps.closure([top], {})
    assert f"{top} needs libshifterdep.so.7, which is not installed" in exc.value.message


def test_not_an_elf_file_is_refused(tmp_path):
    (tmp_path / "x.so").write_text("not elf")
    with pytest.raises(UsageError, match="is not an ELF file"):
        elfdeps.read(str(tmp_path / "x.so"))


# --------------------------------------------------------------------------- MPICH
def test_prepare_mpich_copies_the_abi_library_and_what_it_needs(tmp_path):
    require(os.path.exists(MPICH), "Debian's libmpich12 is not installed")
    lines = modprep.prepare_mpich(str(tmp_path / "mods"))
    lib64 = tmp_path / "mods" / "mpich" / "lib64"
    assert (lib64 / "libmpich.so.12").is_file()
    assert os.readlink(lib64 / "libmpi.so.12") == "libmpich.so.12"  # the ABI's name for it
    assert (lib64 / "libmpichfort.so.12").is_file() and (lib64 / "libucp.so.0").is_file()
    assert any(n.startswith("libuct_cma.so") for n in os.listdir(lib64 / "ucx"))  # UCX's dlopen'ed plugins
    for kept in ("libc.so.6", "libstdc++.so.6", "libgcc_s.so.1"):
        assert not (lib64 / kept).exists()
    cfg = config.parse(lines, "/x/u.conf")
    m = cfg.modules["mpich"]
    assert m.env.prepend == (("LD_LIBRARY_PATH", "/opt/udiImage/modules/mpich/lib64"),)
    assert [(v.source, v.destination, v.read_only) for v in m.site_fs] == [
        (str(tmp_path / "mods" / "mpich"), "/opt/udiImage/modules/mpich", True)]
    # unchanged source: nothing is copied again
    before = os.stat(lib64 / "libmpich.so.12").st_ino
    assert modprep.prepare_mpich(str(tmp_path / "mods")) == lines
    assert os.stat(lib64 / "libmpich.so.12").st_ino == before


def test_prepare_mpich_refuses_another_abi_and_changes_nothing(tmp_path):
    openmpi = _fake_lib(tmp_path, "libmpi.so.40")
    res = _admin("module", "prepare", "mpich", "--dir", str(tmp_path / "mods"), "--from", openmpi)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert f"shifter-admin: {openmpi} has soname libmpi.so.40, not the MPICH ABI's" in res.stderr
    assert "hint:" in res.stderr
    assert not (tmp_path / "mods").exists()
    assert res.stdout == ""


def test_prepare_mpich_from_a_directory_without_mpi(tmp_path):
    res = _admin("module", "prepare", "mpich", "--dir", str(tmp_path / "mods"), "--from", str(tmp_path))
    assert res.returncode == 2
    assert f"no MPI library (libmpi.so.12 or libmpich.so.12) in {tmp_path}" in res.stderr


def test_admin_writes_the_lines_to_a_file(tmp_path):
    require(os.path.exists(MPICH), "Debian's libmpich12 is not installed")
    hook = tmp_path / "hook.sh"
    hook.write_text("true\n")
    res = _admin("module", "prepare", "mpich", "--dir", str(tmp_path / "mods"), "--name", "hostmpi",
                 "--env", "MPICH_GPU_SUPPORT_ENABLED=0", "--userhook", str(hook),
                 "--conf", str(tmp_path / "mpich.conf"))
    assert res.returncode == 0, res.stderr
    cfg = config.parse((tmp_path / "mpich.conf").read_text(), str(tmp_path / "mpich.conf"))
    m = cfg.modules["hostmpi"]
    assert m.env.set == (("MPICH_GPU_SUPPORT_ENABLED", "0"),)
    assert m.userhook == "/opt/udiImage/modules/hostmpi/userhook.sh"
    assert (tmp_path / "mods" / "hostmpi" / "userhook.sh").read_text() == "true\n"
    assert json.loads((tmp_path / "mods" / "hostmpi" / "manifest.json").read_text())["kind"] == "mpich"


def test_admin_bad_arguments_are_one_line(tmp_path):
    res = _admin("module", "prepare", "cuda")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "invalid choice: 'cuda'" in res.stderr
    res = _admin("module", "prepare", "mpich", "--name", "none", "--dir", str(tmp_path))
    assert res.returncode == 2 and "invalid module name 'none'" in res.stderr


# --------------------------------------------------------------------------- GPU
def _standin(tmp_path):
    lib = tmp_path / "drv" / "libcuda.so.1"
    smi = tmp_path / "drv" / "nvidia-smi"
    lib.parent.mkdir()
    _cc("-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(lib), STANDIN)
    _cc("-DSTANDIN_SMI", "-o", str(smi), STANDIN, str(lib))
    return str(lib), str(smi)


def test_prepare_gpu_from_listed_driver_files(tmp_path):
    lib, smi = _standin(tmp_path)
    lines = modprep.prepare_gpu(str(tmp_path / "mods"), libs=[lib], bins=[smi],
                                gpu_devices=["/dev/nvidia0", "/dev/nvidia1"])
    assert (tmp_path / "mods" / "gpu" / "lib64" / "libcuda.so.1").is_file()
    assert os.access(tmp_path / "mods" / "gpu" / "bin" / "nvidia-smi", os.X_OK)
    m = config.parse(lines, "/x/u.conf").modules["gpu"]
    assert m.gpu_devices == ("/dev/nvidia0", "/dev/nvidia1")
    assert ("PATH", "/opt/udiImage/modules/gpu/bin") in m.env.prepend
    assert ("LD_LIBRARY_PATH", "/opt/udiImage/modules/gpu/lib64") in m.env.prepend


@pytest.mark.parametrize("case, message", [
    ("no-libcuda", "no libcuda.so.1 (the CUDA driver library, soname libcuda.so.1) among libcuda.so (libcuda.so.2)"),
    ("bad-device", "invalid --gpu-device '/dev/nvidiactl': a GPU device file is an absolute path ending in its GPU number"),
    ("twice", "--gpu-device /dev/nvidia1 and /dev/gpu1 are both GPU 1"),
    ("versions", "the driver libraries are of different versions"),
])
def test_prepare_gpu_refusals(tmp_path, case, message):
    lib, smi = _standin(tmp_path)
    args = ["module", "prepare", "gpu", "--dir", str(tmp_path / "mods"), "--bin", smi]
    if case == "no-libcuda":
        args += ["--lib", _fake_lib(tmp_path, "libcuda.so.2", "libcuda.so"), "--gpu-device", "/dev/nvidia0"]
    elif case == "bad-device":
        args += ["--lib", lib, "--gpu-device", "/dev/nvidiactl"]
    elif case == "twice":
        args += ["--lib", lib, "--gpu-device", "/dev/nvidia1", "--gpu-device", "/dev/gpu1"]
    else:
        real = tmp_path / "drv" / "libcuda.so.535.1.2"
        os.rename(lib, real)
        os.symlink(real.name, lib)
        other = _fake_lib(tmp_path, "libnvidia-ml.so.1", "libnvidia-ml.so.530.9.9")
        args += ["--lib", lib, "--lib", other, "--gpu-device", "/dev/nvidia0"]
    res = _admin(*args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and message in res.stderr
    assert not (tmp_path / "mods" / "gpu").exists()


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("env, gpus", [
    ({}, set()),
    ({"SLURM_JOB_GPUS": "0,1"}, {0, 1}),
    ({"SLURM_JOB_GPUS": "0,1", "SLURM_STEP_GPUS": "1"}, {1}),
    ({"SLURM_JOB_GPUS": "0,1", "SLURM_STEP_GPUS": ""}, set()),   # the step has none
    ({"SLURM_STEP_GPUS": "0-2,5"}, {0, 1, 2, 5}),
    ({"SLURM_STEP_GPUS": "1,x"}, set()),                        # malformed: none
    ({"SLURM_STEP_GPUS": "3-1"}, set()),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, set()),               # not Slurm's numbering
])
def test_step_gpus(env, gpus):
    assert devices.step_gpus(env) == gpus


def test_covered_devices_are_those_not_the_steps():
    m = config.parse("module_gpu_gpuDevices=/dev/nvidia0 /dev/nvidia1 /dev/nvidia10\n", "/x/u.conf").modules["gpu"]
    assert devices.covered([m], {"SLURM_STEP_GPUS": "1"}) == ["/dev/nvidia0", "/dev/nvidia10"]
    assert devices.visible([m], {"SLURM_STEP_GPUS": "1"}) == ["/dev/nvidia1"]
    assert devices.covered([m], {}) == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia10"]
    assert devices.gpu_id("/dev/nvidia10") == 10 and devices.gpu_id("/dev/nvidiactl") is None


@pytest.mark.parametrize("text, message", [
    ("module_gpu_gpuDevices=/dev/nvidiactl\n",
     "/x/u.conf:1: module_gpu_gpuDevices entry '/dev/nvidiactl' is not a GPU device file"),
    ("\nmodule_gpu_gpuDevices=dev/nvidia0\n", "/x/u.conf:2: module_gpu_gpuDevices entry 'dev/nvidia0'"),
    ("module_gpu_gpuDevices=/dev/nvidia1 /dev/gpu1\n", "/x/u.conf:1: module_gpu_gpuDevices names GPU 1 twice"),
    ("module_mpich_siteEnvPrepend=LD_LIBRARY_PATH\n",
     "/x/u.conf:1: module_mpich_siteEnvPrepend entry 'LD_LIBRARY_PATH' is not NAME=value"),
    ("module_mpich_siteFs=relative:/opt/udiImage/modules/mpich\n", "/x/u.conf:1: module_mpich_siteFs is invalid"),
    ("module_mpich_gpuDevice=/dev/nvidia0\n", "unknown key 'module_mpich_gpuDevice'"),
])
def test_module_config_errors_name_key_and_file(text, message):
    with pytest.raises(ConfigError) as exc:
        config.parse(text, "/x/u.conf")
    assert message in str(exc.value)


def test_launch_plan_carries_the_gpu_devices():
    p = plan.Plan(uid=1, gid=1, jobid="", image_type="id", image_id="a", volumes="", modules="gpu", udi="/u",
                  gpudev=("/dev/nvidia0", "/dev/nvidia1"))
    assert plan.loads(plan.dumps(p)).gpudev == ("/dev/nvidia0", "/dev/nvidia1")


def test_local_site_templates_render_gres_and_modules():
    from tools.site import Site

    site = Site(root="/srv/site")
    text = templates.render("udiRoot.conf", **site.udiroot_context(modules_conf="module_x_siteEnv=A=1\n"))
    cfg = config.parse(text, "/x/u.conf")
    assert "x" in cfg.modules and cfg.defaultModules == ()  # the local site sets no defaultModules
    gres = templates.render("gres.conf", nodes=[{"name": "n1"}], gpu_files=["/srv/site/gpu/dev/nvidia0"])
    assert "NodeName=n1 Name=gpu File=/srv/site/gpu/dev/nvidia0" in gres


def test_a_new_version_replaces_the_module_and_keeps_the_one_before(tmp_path):
    lib, smi = _standin(tmp_path)
    mods = tmp_path / "mods"
    modprep.prepare_gpu(str(mods), libs=[lib], bins=[smi], gpu_devices=["/dev/nvidia0"])
    modprep.prepare_gpu(str(mods), libs=[lib], bins=[smi], gpu_devices=["/dev/nvidia0", "/dev/nvidia1"])
    assert json.loads((mods / "gpu" / "manifest.json").read_text())["gpu_devices"] == ["/dev/nvidia0", "/dev/nvidia1"]
    assert json.loads((mods / ".gpu.previous" / "manifest.json").read_text())["gpu_devices"] == ["/dev/nvidia0"]
    assert sorted(os.listdir(mods)) == [".gpu.previous", "gpu"]  # no staging left


def test_a_module_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # as /tmp without the sticky bit
    res = _admin("module", "prepare", "mpich", "--dir", str(shared / "mods"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert f"refusing --dir {shared}/mods: {shared} is writable by others or not ours" in res.stderr
    assert not (shared / "mods").exists()
    res = _admin("module", "prepare", "mpich", "--dir", str(tmp_path / "m"), "--env", "A=b c")
    assert res.returncode == 2 and "invalid --env 'A=b c'" in res.stderr
