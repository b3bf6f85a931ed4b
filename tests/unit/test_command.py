"""One way to fail: every command's main() is shifter.command.run, which says one line
``<command>: <what> (hint: ...)`` and exits with a code of the one table
(shifter.exit_codes), which the compiled launcher is built from as well."""

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from helpers.prereq import require
from shifter import command, errors, exit_codes
from shifter.errors import CommandNotRun, ConfigError, ShifterError, UsageError
from shifter.runtime import contract_header

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.dirname(sys.executable)
LAUNCHER = os.path.join(BIN, "shifter")


def _raising(exc):
    def body(argv):
        raise exc
    return body


# ------------------------------------------------------------------ the wrapper itself
@pytest.mark.parametrize("error, code, launcher_code", [
    (ShifterError("can't pull x: the gateway does not answer", "is it running?"), 1, 125),
    (UsageError("invalid image 'a b': character ' ' is not allowed", "use docker:REPO:TAG"), 2, 125),
    (ConfigError("/etc/udiRoot.conf:3: udiMount must be an absolute path"), 3, 125),
    (CommandNotRun("can't run nope: command not found"), 127, 127),
    (CommandNotRun("can't run /etc/passwd: permission denied", missing=False), 126, 126),
])
def test_each_error_class_is_one_line_and_its_code(capsys, error, code, launcher_code):
    assert command.run("shifterimg", _raising(error), []) == code
    err = capsys.readouterr().err
    expected = f"shifterimg: {error.what}" + (f" (hint: {error.hint})" if error.hint else "")
    assert err == expected + "\n"
    # shifter keeps 1..124 for the command it runs: its own failures are 125
    assert command.run("shifter", _raising(error), [], launcher=True) == launcher_code
    assert capsys.readouterr().err == f"shifter: {expected.split(': ', 1)[1]}\n"


def test_the_line_is_errors_line_and_str_is_describe():
    e = UsageError("invalid --limit 0: must be at least 1", "pass --limit 10")
    assert str(e) == errors.describe(e.what, e.hint) == "invalid --limit 0: must be at least 1 (hint: pass --limit 10)"
    assert errors.line("shifterimg", e) == f"shifterimg: {e}"
    assert str(ShifterError("no hint")) == "no hint" and ShifterError("x").message == "x"


def test_success_and_none_are_zero_and_codes_pass_through():
    assert command.run("x", lambda argv: None, []) == 0
    assert command.run("x", lambda argv: 7, []) == 7
    assert command.run("x", lambda argv: len(argv), ["a", "b"]) == 2


def test_unexpected_exception_is_one_line_and_the_traceback_is_kept_aside(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("SHIFTER_DEBUG", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR

    def body(argv):
        return {}["no-such-key"]

    assert command.run("shifter-admin", body, []) == exit_codes.FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    m = re.fullmatch(r"shifter-admin: internal error: KeyError: 'no-such-key' \(hint: a bug in shifter; "
                     r"the traceback is in (\S+)\)\n", err)
    assert m, err
    path = m.group(1)
    assert os.path.dirname(path) == str(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    saved = open(path).read()
    assert saved.startswith("Traceback") and "in body" in saved and "KeyError: 'no-such-key'" in saved
    # the launcher's own failure, whatever it is, is 125
    assert command.run("shifter", body, [], launcher=True) == exit_codes.LAUNCH
    capsys.readouterr()


def test_shifter_debug_prints_the_traceback_after_the_line(capsys, monkeypatch):
    monkeypatch.setenv("SHIFTER_DEBUG", "1")
    assert command.run("setupRoot", _raising(RuntimeError("kaboom")), []) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "setupRoot: internal error: RuntimeError: kaboom (hint: the traceback follows)"
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "RuntimeError: kaboom"


def test_debug_is_read_before_the_body_clears_the_environment(capsys, monkeypatch):
    """setupRoot and unsetupRoot empty os.environ first thing."""
    monkeypatch.setenv("SHIFTER_DEBUG", "1")

    def body(argv):
        os.environ.pop("SHIFTER_DEBUG")
        raise ShifterError("can't mount x")

    assert command.run("setupRoot", body, []) == 1
    err = capsys.readouterr().err
    assert err.startswith("setupRoot: can't mount x\nTraceback"), err


def test_keyboard_interrupt_is_130(capsys):
    assert command.run("shifterimg", _raising(KeyboardInterrupt()), []) == exit_codes.INTERRUPTED == 130
    assert capsys.readouterr().err == "shifterimg: interrupted\n"
    assert command.run("shifter", _raising(KeyboardInterrupt()), [], launcher=True) == 130


def test_os_error_is_one_line_with_the_file(capsys):
    e = PermissionError(13, "Permission denied", "/etc/shadow")
    assert command.run("shifter-admin", _raising(e), []) == 1
    assert capsys.readouterr().err == "shifter-admin: /etc/shadow: permission denied\n"


def test_system_exit_passes_through():
    with pytest.raises(SystemExit):
        command.run("x", _raising(SystemExit(0)), [])


def test_argparse_errors_are_usage_errors(capsys):
    parser = command.parser_class()(prog="shifterimg")
    parser.add_argument("--limit", type=int)
    assert command.run("shifterimg", lambda argv: parser.parse_args(argv) and 0, ["--limit", "x"]) == 2
    assert capsys.readouterr().err == ("shifterimg: argument --limit: invalid int value: 'x' "
                                       "(hint: see shifterimg --help)\n")


def test_broken_pipe_on_stdout_is_quiet_141():
    """`shifterimg images | head -1`: the reader goes; nothing on stderr, 128+SIGPIPE."""
    code = ("import sys; from shifter import command\n"
            "def body(argv):\n"
            "    for _ in range(200000):\n"
            "        print('x' * 100)\n"
            "sys.exit(command.run('shifterimg', body))\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == exit_codes.BROKEN_PIPE == 141
    assert err == b""


def test_a_broken_pipe_elsewhere_is_a_failure_line(capsys):
    assert command.run("shifterimg", _raising(BrokenPipeError(32, "Broken pipe")), []) == 1
    assert capsys.readouterr().err == "shifterimg: broken pipe\n"


# ------------------------------------------------------------------ exec failures
def _exec(argv, path):
    code = ("import sys; from shifter import command; from shifter.runtime.launcher import entry\n"
            f"sys.exit(command.run('shifter', lambda a: entry.exec_command({argv!r}, {{'PATH': {path!r}}}), [],"
            " launcher=True))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_command_not_found_is_127_and_one_line(tmp_path):
    res = _exec(["no-such-command-here"], str(tmp_path))
    assert res.returncode == 127
    assert res.stderr == "shifter: can't run no-such-command-here: command not found\n"


def test_command_not_executable_is_126_and_one_line(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    res = _exec([str(script)], str(tmp_path))
    assert res.returncode == 126
    assert res.stderr == f"shifter: can't run {script}: permission denied\n"


def test_exec_failure_in_the_builder_comes_back_with_its_code():
    """A private container's builder (a forked child) reports the exec failure to the
    launcher, which exits with 127/126 as if it had exec'd itself."""
    from shifter.runtime.launcher import private_user

    for missing, code in ((True, 127), (False, 126)):
        report = "\0".join((private_user._NOT_RUN[code], "can't run x: y", "")).encode()
        e = private_user._decode_error(report)
        assert isinstance(e, CommandNotRun) and e.exit_code == code and e.what == "can't run x: y"


# ------------------------------------------------------------------ every command
def _cmd(name, *args, env=None):
    return subprocess.run([os.path.join(BIN, name), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("argv, code", [
    (["shifter", "--no-such-option"], 125),
    (["shifterimg", "--no-such-option"], 2),
    (["shifterimg"], 2),
    (["shifter-admin", "module", "prepare", "cuda"], 2),
    (["shifter-gateway", "--listen", "nowhere"], 2),
    (["unsetupRoot", "extra"], 2),
    (["setupRoot", "-U", "4242", "id", "x"], 3),  # SHIFTER_CONFIG names no file: the site's fault
    (["shifterimg", "images"], 3),
])
def test_every_installed_command_fails_with_one_line_and_a_table_code(tmp_path, argv, code):
    res = _cmd(*argv, env={"SHIFTER_CONFIG": str(tmp_path / "no-such-udiRoot.conf")})
    assert res.returncode == code, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"{argv[0]}: ") and " (hint: " in res.stderr and res.stderr.endswith(")\n")


@pytest.mark.parametrize("module, argv", [
    ("tools.cluster", ["sideways"]),
    ("tools.images", ["--no-such-option"]),
    ("tools.users", ["extra"]),
    ("tools.demo", ["extra"]),
    ("tools.gateway", ["sideways"]),
    ("tools.registry", ["sideways"]),
])
def test_the_local_site_tools_fail_the_same_way(module, argv):
    res = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and " (hint: " in res.stderr, res.stderr


# ------------------------------------------------------------------ the table, Python and C
def _doc_table():
    text = open(os.path.join(SRC, "docs", "dev.md")).read()
    section = text.split("## Failing: the one wrapper and the exit-code table", 1)[1].split("\n## ", 1)[0]
    return [(name, int(code), meaning) for code, name, meaning in
            re.findall(r"^\| (\d+) \| `([A-Z_]+)` \| (.+) \|$", section, re.M)]


def test_the_documented_table_is_the_module():
    assert _doc_table() == exit_codes.table()
    codes = [code for _, code, _ in exit_codes.table()]
    assert len(set(codes)) == len(codes)
    assert (exit_codes.OK, exit_codes.FAILURE, exit_codes.USAGE, exit_codes.CONFIG) == (0, 1, 2, 3)
    # what scripts rely on: docker-run's 125 for the launcher, a shell's 126/127, 128+N
    assert (exit_codes.LAUNCH, exit_codes.NOT_EXECUTABLE, exit_codes.NOT_FOUND) == (125, 126, 127)
    assert exit_codes.INTERRUPTED == exit_codes.SIGNAL_BASE + 2 and exit_codes.BROKEN_PIPE == exit_codes.SIGNAL_BASE + 13


def test_the_installed_launcher_was_built_from_the_table():
    res = subprocess.run([LAUNCHER], env={"SHIFTER_LAUNCHER_PRINT_EXIT_CODES": "1"}, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"{name}={code}" for name, code, _ in exit_codes.table()]


def test_the_c_header_compiles_to_the_table(tmp_path):
    cc = shutil.which(os.environ.get("CC", "gcc"))
    require(cc is not None, "needs a C compiler (gcc): the launcher is built with it")
    (tmp_path / "exit_codes.h").write_text(exit_codes.c_header())
    (tmp_path / "t.c").write_text('#include <stdio.h>\n#include "exit_codes.h"\nint main(void) {\n'
                                  '#define X(name, code) printf("%s=%d\\n", #name, SHIFTER_EXIT_##name);\n'
                                  "    SHIFTER_EXIT_TABLE\n    return 0;\n}\n")
    subprocess.run([cc, "-Wall", "-Werror", "-I", str(tmp_path), "-o", str(tmp_path / "t"), str(tmp_path / "t.c")],
                   check=True)
    out = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"{name}={code}" for name, code, _ in exit_codes.table()]


def test_the_c_sources_take_every_exit_code_from_the_header():
    """No number in exit()/_exit(), no 125-127 and no 128+N: SHIFTER_EXIT_* of the header."""
    for name in contract_header.LAUNCHER_SOURCES:
        text = re.sub(r"/\*.*?\*/", "", open(os.path.join(SRC, name)).read(), flags=re.S)
        assert not re.findall(r"\b_?exit\(\d+\)", text), name
        assert not re.findall(r"\b12[5-7]\b|\b128 *\+", text), name


def test_the_compiled_launchers_own_failure_is_125_and_one_line(tmp_path):
    """The real binary, in a prefix without Python: handing over to Python fails."""
    os.makedirs(tmp_path / "bin")
    shutil.copy(LAUNCHER, tmp_path / "bin" / "shifter")
    res = subprocess.run([str(tmp_path / "bin" / "shifter"), "--verbose", "true"], capture_output=True, text=True,
                         timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == exit_codes.LAUNCH == 125, res.stderr
    assert res.stderr == f"shifter: can't start {os.path.realpath(tmp_path)}/bin/python: No such file or directory\n"


# ------------------------------------------------------------------ one style everywhere
def test_the_spank_plugin_and_the_launcher_say_the_same_line(tmp_path):
    """srun --image=... (the SPANK dispatcher's slurm_error) and shifter --image=... (the
    wrapper) refuse the same image with the very same line."""
    from shifter.spank import dispatch
    from shifter.spank.handle import CTX_ALLOCATOR
    from helpers.fake_spank import FakeSpank

    conf = tmp_path / "udiRoot.conf"
    conf.write_text("system=test\nimagePath=/images\nudiMount=/var/udiMount\n")
    sp = FakeSpank(CTX_ALLOCATOR)
    assert dispatch.run(sp, "init_post_opt", [f"shifter_config={conf}"], {"image": "docker:Bad Name"}) == -1
    res = subprocess.run([LAUNCHER, "--image=docker:Bad Name", "true"], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "SHIFTER_CONFIG": str(conf)})
    assert res.returncode == 125
    assert sp.errors == [res.stderr.rstrip("\n")]
    assert sp.errors[0].startswith("shifter: invalid image 'docker:Bad Name': ") and " (hint: " in sp.errors[0]


# ------------------------------------------------------------------ library code never prints or exits
#: the command layer: the modules whose main() is a command (they print their output)
COMMAND_MODULES = {"shifter/command.py", "runtime/launcher/launch.py", "runtime/builder/setuproot.py", "runtime/builder/teardown.py",
                   "runtime/siteprep/admin.py", "gateway/server.py", "gateway_client/cli.py", "spank/embed_build.py",
                   "spank/hookd.py"}
LIBRARY_DIRS = ("shifter", "runtime", "wlm", "gateway", "gateway_client", "spank")


def _calls(path):
    import ast

    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else (
                f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else "")
            if name == "os.write" and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == 2:
                name = "os.write(2)"
            if name in ("print", "sys.exit", "os._exit", "SystemExit", "os.write(2)"):
                yield name, node.lineno
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                (node.value.id, node.attr) in (("sys", "stderr"), ("sys", "stdout")):
            yield f"sys.{node.attr}", node.lineno


def test_library_code_never_prints_or_exits():
    """Outside the command layer: no print, no sys.exit/SystemExit, no sys.stderr/stdout;
    os._exit and writes to fd 2 only in forked children, said in a comment beside them."""
    found = []
    for top in LIBRARY_DIRS:
        for name in sorted(os.listdir(os.path.join(SRC, top))):
            rel = f"{top}/{name}"
            if not name.endswith(".py") or rel in COMMAND_MODULES:
                continue
            lines = open(os.path.join(SRC, rel)).read().splitlines()
            for call, lineno in _calls(os.path.join(SRC, rel)):
                if call in ("os._exit", "os.write(2)"):
                    near = " ".join(lines[max(0, lineno - 4):lineno]).lower()
                    if "child" in near or "forked" in near:
                        continue
                found.append(f"{rel}:{lineno}: {call}")
    assert found == []
