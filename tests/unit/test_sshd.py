"""The job's sshd and /var/hostsfile, pure parts: the hostsfile format, Slurm's node and
CPU lists, the allocation read from scontrol, the user's key, the host key (against
ssh-keygen), the rendered configs (docs/sshd.md)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from shifter import templates
from shifter.errors import ConfigError, ShifterError, UsageError
from shifter.runtime import config as udiconfig
from shifter.runtime import ed25519, etcfiles, hostsfile
from shifter.runtime.builder import sshd
from shifter.wlm import jobinfo


@pytest.mark.parametrize("nodelist, want", [
    ("n1", ["n1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[1-2,7],login01", ["n1", "n2", "n7", "login01"]),
    ("nid[008-011]", ["nid008", "nid009", "nid010", "nid011"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
])
def test_node_lists_expand_as_slurm_writes_them(nodelist, want):
    assert hostsfile.expand_nodelist(nodelist) == want


@pytest.mark.parametrize("bad", ["n[1-3", "n1]", "n[a-b]", "n[3-1]", "n1,,n2", "n 1", "n1;rm"])
def test_a_bad_node_list_is_refused(bad):
    with pytest.raises(UsageError):
        hostsfile.expand_nodelist(bad)


def test_cpus_per_node_expand_with_repeats():
    assert hostsfile.expand_cpus("2(x3)", 3) == [2, 2, 2]
    assert hostsfile.expand_cpus("4,2(x2),1", 4) == [4, 2, 2, 1]
    with pytest.raises(UsageError, match="3 counts for 2 nodes"):
        hostsfile.expand_cpus("1(x3)", 2)
    with pytest.raises(UsageError, match="not N or N"):
        hostsfile.expand_cpus("2(3)", 1)


def test_the_hostsfile_is_one_line_per_slot_in_shifters_format():
    hosts = hostsfile.from_slurm("n[1-3]", "2(x3)")
    assert hostsfile.render(hosts) == "n1\nn1\nn2\nn2\nn3\nn3\n"
    option = hostsfile.format_option(hosts)
    assert option == "n1/2 n2/2 n3/2"
    assert hostsfile.parse_option(option) == hosts
    assert hostsfile.parse_option("a b/3") == [("a", 1), ("b", 3)]


@pytest.mark.parametrize("bad, why", [("", "no hosts"), ("n1/x", "not a number"), ("../etc/2", "not a host"),
                                      ("n1/2 r%oot", "not a host"), ("n1/-2", "not a number")])
def test_setuproot_N_refuses_what_is_not_host_slash_count(bad, why):
    with pytest.raises(UsageError, match=why):
        hostsfile.parse_option(bad)


SCONTROL = ("JobId=7 JobName=wrap UserId=sftest1(4242) NodeList=n[1-3] BatchHost=n1 NumNodes=3 NumCPUs=5 "
            "NumTasks=3 CPUs/Task=1 TRES=cpu=5,node=3   Nodes=n[1-2] CPU_IDs=0-1 Mem=0 GRES=   "
            "Nodes=n3 CPU_IDs=1 Mem=0 GRES= MinCPUsNode=1 OverSubscribe=NO Contiguous=0")


def test_the_allocation_is_read_from_scontrol_detail():
    alloc = jobinfo.parse_allocation(SCONTROL)
    assert alloc.hosts == (("n1", 2), ("n2", 2), ("n3", 1)) and alloc.exclusive
    shared = jobinfo.parse_allocation(SCONTROL.replace("OverSubscribe=NO", "OverSubscribe=OK"))
    assert not shared.exclusive


def _fake_scontrol(tmp_path, body: str) -> str:
    exe = tmp_path / "scontrol"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return str(tmp_path)


def test_the_prologs_query_runs_scontrol_and_reads_its_answer(tmp_path):
    path = _fake_scontrol(tmp_path, f'[ "$*" = "show job -d -o 7" ] || exit 3; echo "{SCONTROL}"; echo noise >&2')
    query = jobinfo.query_allocation(7, path=path)
    assert jobinfo.read_allocation(query).hosts == (("n1", 2), ("n2", 2), ("n3", 1))
    assert query.collected
    with pytest.raises(OSError):  # fds closed, child reaped
        os.fstat(query.out_fd)
    with pytest.raises(ChildProcessError):
        os.waitpid(query.pid, os.WNOHANG)


def test_the_prologs_query_reports_scontrols_error_and_a_timeout(tmp_path):
    path = _fake_scontrol(tmp_path, 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
    with pytest.raises(ShifterError, match="scontrol show job failed: slurm_load_jobs error: Invalid job id"):
        jobinfo.read_allocation(jobinfo.query_allocation(7, path=path))
    path = _fake_scontrol(tmp_path, "exec /bin/sleep 30")
    query = jobinfo.query_allocation(7, path=path)
    with pytest.raises(ShifterError, match="did not answer within 0 s"):
        jobinfo.read_allocation(query, timeout=0.2)
    with pytest.raises(ChildProcessError):  # killed and reaped
        os.waitpid(query.pid, os.WNOHANG)
    with pytest.raises(FileNotFoundError, match="scontrol is not in"):
        jobinfo.query_allocation(7, path=str(tmp_path / "none"))


def test_the_users_key_is_made_once_private_and_refused_when_others_can_read_it(tmp_path):
    home = str(tmp_path)
    assert sshd.ensure_user_key(home) is True
    d, priv, pub = sshd.user_key_paths(home)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert sshd.ensure_user_key(home) is False
    sshd.parse_pubkey(open(pub).read())
    os.chmod(priv, 0o640)
    with pytest.raises(UsageError, match="others may read it") as e:
        sshd.ensure_user_key(home)
    assert "chmod 600" in e.value.hint


def test_concurrent_submissions_make_one_pair(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(8) as pool:
        made = pool.map(sshd.ensure_user_key, [str(tmp_path)] * 16)
    assert made.count(True) == 1
    _, priv, pub = sshd.user_key_paths(str(tmp_path))
    out = subprocess.run(["ssh-keygen", "-y", "-f", priv], capture_output=True, text=True)
    assert out.stdout.split()[:2] == open(pub).read().split()[:2]


def test_a_home_that_does_not_allow_the_key_refuses_in_one_line(tmp_path):
    open(tmp_path / ".udiRoot", "w").close()  # a file where the directory goes
    with pytest.raises(UsageError, match="can't (use|create) your container ssh key") as e:
        sshd.ensure_user_key(str(tmp_path))
    assert "\n" not in str(e.value) and "ssh-keygen" in e.value.hint


@pytest.mark.parametrize("text, why", [
    ("", "0 lines"), ("a\nb\n", "2 lines"), ("ssh-dss AAAA x", "key type"),
    ("ssh-ed25519 !!!! x", "base64"), ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIK7P", "not a ssh-rsa"),
    ('command="x" ssh-ed25519 AAAA', "key type"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "key type"),
])
def test_only_one_well_formed_public_key_is_accepted(text, why):
    with pytest.raises(UsageError, match=why):
        sshd.parse_pubkey(text)


def test_the_authorized_key_names_only_the_jobs_nodes():
    key = ed25519.generate()[1].strip()
    line = sshd.authorized_keys_line(sshd.parse_pubkey(key + " me@here"), ["127.0.1.1", "127.0.1.2"])
    assert line == f'from="127.0.1.1,127.0.1.2" {key}\n'
    with pytest.raises(ConfigError):
        sshd.authorized_keys_line(key, ['1.2.3.4" command="sh'])


def test_the_host_key_is_what_ssh_keygen_reads(tmp_path):
    from helpers.prereq import require

    require(shutil.which("ssh-keygen") is not None, "needs ssh-keygen (Debian openssh-client)")
    private, public = ed25519.generate("host")
    path = tmp_path / "key"
    path.write_bytes(private)
    os.chmod(path, 0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == public.split()[:2]


def test_the_rendered_configs():
    ctx = {"port": 2222, "authorized_keys": "/var/shifter/sshd/authorized_keys", "path": sshd.PATH_IN_SESSIONS,
           "key_name": sshd.USER_KEY, "loader": "/opt/udiImage/ssh/lib/ld.so", "libdir": "/opt/udiImage/ssh/lib",
           "ssh": "/opt/udiImage/ssh/libexec/ssh", "config": "/opt/udiImage/ssh/etc/ssh_config",
           "address_file": "/var/shifter/sshd/address"}
    server = templates.render("sshd_config", **ctx).splitlines()
    for line in ("Port 2222", "PasswordAuthentication no", "PermitRootLogin no", "StrictModes yes",
                 "AuthorizedKeysFile /var/shifter/sshd/authorized_keys", "UsePAM no", "PidFile none"):
        assert line in server
    client = [ln.strip() for ln in templates.render("ssh_config", **ctx).splitlines()]
    for line in ("Port 2222", "StrictHostKeyChecking no", "IdentityFile ~/.udiRoot/id_rsa.key"):
        assert line in client
    wrapper = templates.render("udi-ssh", **ctx)
    assert wrapper.startswith("#!/bin/sh\n") and "-F /opt/udiImage/ssh/etc/ssh_config" in wrapper


def test_the_sshd_port_is_a_site_key():
    assert udiconfig.parse("").sshdPort == 1204
    assert udiconfig.parse("sshdPort=2022\n").sshdPort == 2022
    with pytest.raises(ConfigError, match="sshdPort"):
        udiconfig.parse("sshdPort=70000\n")


def test_a_login_shell_the_image_lacks_becomes_bin_sh():
    lines = ["root:x:0:0:root:/root:/bin/bash", "u:x:42:42::/home/u:/bin/bash"]
    fixed = etcfiles.fix_shell(lines, 42, lambda shell: shell == "/bin/sh")
    assert fixed == ["root:x:0:0:root:/root:/bin/bash", "u:x:42:42::/home/u:/bin/sh"]
    assert etcfiles.fix_shell(lines, 42, lambda shell: True) == lines
