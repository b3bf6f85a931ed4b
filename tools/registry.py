"""The two local Docker registries of the test site.

Debian's ``/usr/bin/docker-registry`` (distribution 2.8) runs twice, bound to 127.0.0.1:

* ``site.registry_port`` (5000): open, no authentication;
* ``site.registry_auth_port`` (5001): HTTP Basic authentication against a bcrypt htpasswd file
  (``site.etc/registry.htpasswd``, mode 0600) holding ``site.registry_user`` /
  ``site.registry_password``.

Each instance has its config ``site.etc/registry-<port>.yml`` (from ``templates/registry.yml.j2``),
its storage ``site.registry_data/<port>``, its log ``site.log/registry-<port>.log`` and its pidfile
``site.pidfile("registry-<port>")``.  Deleting manifests is enabled.

``start`` is idempotent: an instance whose pidfile names a live ``docker-registry`` serving this
config, and whose port answers ``GET /v2/``, is left alone unless its config changed.  ``stop``
signals only the processes named by our pidfiles after checking their command line.

CLI: ``tools/run-module registry start|stop|status``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from shifter import templates
from shifter.errors import ShifterError
from tools import daemons
from tools.site import Site

REGISTRY_BIN = "/usr/bin/docker-registry"
REALM = "shifter-test-registry"
READY_TIMEOUT = 10.0  # seconds a fresh registry gets to answer /v2/
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL

# Popen objects of the registries this process started: kept so they are reaped, not zombies.


# -- the one helper for external commands of the site tools -------------------------------


def run_tool(argv: list[str], what: str, hint: str | None = None, secret: str | None = None,
             timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` with captured text output; raise ShifterError("can't WHAT: ...") on failure.

    The message names the command and the tail of its stderr; ``secret`` (e.g. a password on
    the command line) is masked in it.
    """

    def shown(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise ShifterError(f"can't {what}: {argv[0]}: command not found",
                           hint or f"install the package that provides {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise ShifterError(f"can't {what}: {shown(' '.join(argv))}: timed out after {timeout} s",
                           hint) from None
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:])
        raise ShifterError(
            f"can't {what}: {shown(' '.join(argv))} exited with {proc.returncode}: "
            f"{shown(tail) or 'no error output'}", hint)
    return proc


@contextlib.contextmanager
def file_lock(path: str):
    """Hold an exclusive flock on ``path`` (created if needed) for the ``with`` block."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- the instances -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One registry process of the site."""

    site: Site
    port: int
    auth: bool

    @property
    def name(self) -> str:
        return f"registry-{self.port}"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> str:
        return os.path.join(self.site.etc, f"{self.name}.yml")

    @property
    def storage(self) -> str:
        return os.path.join(self.site.registry_data, str(self.port))

    @property
    def log(self) -> str:
        return os.path.join(self.site.log, f"{self.name}.log")

    @property
    def pidfile(self) -> str:
        return self.site.pidfile(self.name)


def instances(site: Site) -> tuple[Instance, Instance]:
    return (Instance(site, site.registry_port, auth=False),
            Instance(site, site.registry_auth_port, auth=True))


def htpasswd_path(site: Site) -> str:
    return os.path.join(site.etc, "registry.htpasswd")


def probe(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of ``GET http://URL/v2/`` (200 open, 401 auth), or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{url}/v2/", timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _is_ours(pid: int, inst: Instance) -> bool:
    """Whether ``pid`` is a live (not zombie) docker-registry serving ``inst``'s config."""
    argv = daemons.live_argv(pid)
    return bool(argv) and os.path.basename(argv[0]) == b"docker-registry" and os.fsencode(inst.config) in argv


def _our_pid(inst: Instance) -> int | None:
    """The instance's registry process: the pidfile's, else one found by its command line."""
    try:
        with open(inst.pidfile) as f:
            pid = int(f.read().strip())
        if _is_ours(pid, inst):
            return pid
    except (OSError, ValueError):
        pass
    for name in os.listdir("/proc"):  # pidfile lost or stale: look for an orphan of ours
        if name.isdigit() and _is_ours(int(name), inst):
            return int(name)
    return None


def _write_pidfile(inst: Instance, pid: int) -> None:
    tmp = f"{inst.pidfile}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, inst.pidfile)


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "empty log"


def _ensure_htpasswd(site: Site) -> bool:
    """Create the bcrypt htpasswd file unless it already accepts the site's credentials.

    Returns True when the file was (re)written.
    """
    path = htpasswd_path(site)
    if os.path.exists(path):
        check = subprocess.run(["htpasswd", "-vb", path, site.registry_user,
                                site.registry_password], capture_output=True)
        if check.returncode == 0:
            os.chmod(path, 0o600)
            return False
    entry = run_tool(["htpasswd", "-Bbn", site.registry_user, site.registry_password],
                     "create the registry password file", hint="apt-get install apache2-utils",
                     secret=site.registry_password).stdout.strip()
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(entry + "\n")
    os.replace(tmp, path)
    return True


def _write_config(inst: Instance) -> bool:
    os.makedirs(inst.storage, mode=0o755, exist_ok=True)
    return templates.write("registry.yml", inst.config, 0o644, port=inst.port,
                           storage_dir=inst.storage, realm=REALM,
                           htpasswd_path=htpasswd_path(inst.site) if inst.auth else None)


def _spawn(inst: Instance) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with open(inst.log, "ab") as log:
        try:
            proc = subprocess.Popen([REGISTRY_BIN, "serve", inst.config], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd="/", env=env,
                                    start_new_session=True)
        except FileNotFoundError:
            raise ShifterError(f"can't start registry: {inst.url}: {REGISTRY_BIN} not found",
                               "apt-get install docker-registry") from None
    _write_pidfile(inst, proc.pid)
    return proc


def _wait_ready(inst: Instance, proc: subprocess.Popen) -> None:
    expected = 401 if inst.auth else 200
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        code = probe(inst.url, timeout=0.5)
        if proc.poll() is not None:
            _forget(inst, proc.pid)
            raise ShifterError(f"can't start registry: {inst.url}: exited with {proc.returncode}: "
                               f"{_log_tail(inst.log)}", f"see {inst.log}")
        if code == expected:
            return
        if time.monotonic() > deadline:
            daemons.terminate(proc.pid, STOP_TIMEOUT)
            _forget(inst, proc.pid)
            why = f"GET /v2/ answered {code}" if code else "port does not answer"
            raise ShifterError(f"can't start registry: {inst.url}: not ready after "
                               f"{READY_TIMEOUT:.0f} s ({why}): {_log_tail(inst.log)}",
                               f"see {inst.log}")
        time.sleep(0.05)


def _forget(inst: Instance, pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(inst.pidfile)


# -- public API ----------------------------------------------------------------------------


def start(site: Site) -> None:
    """Start both registries (idempotent); return once both answer ``GET /v2/``."""
    for d in (site.etc, site.log, site.run, site.registry_data):
        os.makedirs(d, mode=0o755, exist_ok=True)
    with file_lock(os.path.join(site.run, "registry.lock")):
        password_changed = _ensure_htpasswd(site)
        started = []
        for inst in instances(site):
            changed = _write_config(inst) or (inst.auth and password_changed)
            pid = _our_pid(inst)
            if pid and not changed and probe(inst.url) in (200, 401):
                _write_pidfile(inst, pid)
                continue
            if pid:
                daemons.terminate(pid, STOP_TIMEOUT)
                _forget(inst, pid)
            if probe(inst.url) is not None:
                raise ShifterError(f"can't start registry: {inst.url}: the port is in use by "
                                   "another process", f"ss -ltnp 'sport = :{inst.port}'")
            started.append((inst, _spawn(inst)))
        for inst, proc in started:
            _wait_ready(inst, proc)


def stop(site: Site) -> None:
    """Stop the registries our pidfiles name (and nothing else)."""
    with file_lock(os.path.join(site.run, "registry.lock")):
        for inst in instances(site):
            pid = _our_pid(inst)
            if pid:
                daemons.terminate(pid, STOP_TIMEOUT)
            _forget(inst, pid or -1)


def status(site: Site) -> dict:
    """Per instance name: url, auth, pid (None if not running), http (GET /v2/ status), paths."""
    result = {}
    for inst in instances(site):
        pid = _our_pid(inst)
        result[inst.name] = {
            "url": inst.url,
            "auth": inst.auth,
            "pid": pid,
            "http": probe(inst.url) if pid else None,
            "config": inst.config,
            "storage": inst.storage,
            "log": inst.log,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    return daemons.service_main(argv, "tools/run-module registry", "Run the test site's two Docker registries.", start, stop, status)


if __name__ == "__main__":
    sys.exit(main())
