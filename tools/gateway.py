"""The local site's image gateway (``shifter-gateway``), run as a daemon.

Files: config ``site.etc/imagemanager.json`` (from ``templates/imagemanager.json.j2``),
state under ``site.root/gateway/`` (layer cache, scratch space, SQLite catalog), images in
``site.images`` (udiRoot.conf's imagePath), log ``site.log/gateway.log``, pidfile
``site.pidfile("gateway")``.  The gateway listens on 127.0.0.1:``site.gateway_port`` and
pulls from the site's registries (127.0.0.1:5000, the default location, and :5001); the
platform is udiRoot.conf's system ``local``; admins: root; ``sftest1`` may import.

``start`` is idempotent: a running gateway that answers is kept unless its config or the
installed shifter code changed since it started.  ``stop`` signals only the process our
pidfile names after checking its command line.

``launch``/``wait_ready``/``render_config`` also serve tests and benchmarks that run a
private gateway.  CLI: ``tools/run-module gateway start|stop|status``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from shifter import templates
from shifter.errors import ShifterError
from tools import daemons
from tools.site import TEST_USERS, Site

SYSTEM = "local"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


# -- any gateway -------------------------------------------------------------------------------


def render_config(path: str, *, system: str, image_dir: str, munge_socket: str, state_dir: str,
                  listen: str, locations: dict[str, str], default_location: str,
                  admins=("root",), import_users=(), metrics: bool = True,
                  compression: str = "lz4", pull_update_timeout: int = 300,
                  expiration_timeout: str = "90:00:00:00", worker_threads: int = 2,
                  log_level: str = "info", expand_dir: str | None = None,
                  image_size_limit: int | str | None = "64G", image_layer_limit: int | None = 256) -> bool:
    """Write an imagemanager.json; ``locations`` maps registry name -> base URL; the image
    limits are ImageSizeLimit (bytes or a size text) and ImageLayerLimit (None: no limit).

    Cache, catalog and (unless ``expand_dir`` is given) scratch space go under ``state_dir``.
    Returns True when the file changed.
    """
    return templates.write(
        "imagemanager.json", path, 0o644,
        system=system, image_dir=image_dir, munge_socket=munge_socket,
        cache_dir=os.path.join(state_dir, "cache"),
        expand_dir=expand_dir or os.path.join(state_dir, "expand"),
        catalog_file=os.path.join(state_dir, "catalog.sqlite"), listen=listen,
        locations=[{"name": n, "url": u} for n, u in locations.items()],
        default_location=default_location, admins=list(admins), import_users=list(import_users),
        metrics=metrics, compression=compression, pull_update_timeout=pull_update_timeout,
        expiration_timeout=expiration_timeout, worker_threads=worker_threads, log_level=log_level,
        image_size_limit=image_size_limit, image_layer_limit=image_layer_limit)


def gateway_bin(prefix: str = sys.prefix) -> str:
    return os.path.join(prefix, "bin", "shifter-gateway")


def launch(config: str, log: str, prefix: str = sys.prefix, env: dict | None = None) -> subprocess.Popen:
    """Start ``shifter-gateway --config CONFIG`` detached, output appended to ``log``."""
    return daemons.spawn([gateway_bin(prefix), "--config", config], log, env=env)


def probe(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of ``GET URL/`` (200 when a gateway answers), None if nothing answers."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"{url}/", timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def wait_ready(url: str, proc: subprocess.Popen, log: str, timeout: float = READY_TIMEOUT) -> None:
    """Return once the gateway at ``url`` answers; raise with its log tail if it exits or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ShifterError(f"can't start the gateway: exited with {proc.returncode}: "
                               f"{' | '.join(daemons.log_tail(log, 3))}", f"see {log}")
        if probe(url, 0.5) == 200:
            return
        if time.monotonic() > deadline:
            raise ShifterError(f"can't start the gateway: {url} does not answer after {timeout:.0f} s: "
                               f"{' | '.join(daemons.log_tail(log, 3))}", f"see {log}")
        time.sleep(0.05)


def write_client_config(path: str, site: Site, gateways: list[str], image_dir: str) -> str:
    """A udiRoot.conf like the site's, but with these imageGateway URLs and imagePath (tests)."""
    templates.write("udiRoot.conf", path, 0o644,
                    **site.udiroot_context(system=SYSTEM, image_path=image_dir, image_gateways=gateways))
    return path


class Instance:
    """A private gateway for tests and benchmarks: its own config, catalog, cache and imageDir
    under ``directory`` (made world-readable, so test users can read its udiRoot.conf).

    ``config`` overrides ``render_config``'s keyword arguments.
    """

    def __init__(self, directory: str, site: Site, port: int, **config):
        self.dir = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.image_dir = os.path.join(directory, "images")
        self.state_dir = os.path.join(directory, "state")
        self.config = os.path.join(directory, "imagemanager.json")
        self.log = os.path.join(directory, "gateway.log")
        self.proc: subprocess.Popen | None = None
        self.prefix = site.prefix
        os.makedirs(self.image_dir, exist_ok=True)
        os.chmod(directory, 0o755)
        settings = dict(system=SYSTEM, image_dir=self.image_dir, munge_socket=site.munge_socket,
                        state_dir=self.state_dir, listen=f"127.0.0.1:{port}",
                        locations={site.registry_url(): f"http://{site.registry_url()}",
                                   site.registry_url(auth=True): f"http://{site.registry_url(auth=True)}"},
                        default_location=site.registry_url())
        settings.update(config)
        render_config(self.config, **settings)

    def start(self) -> "Instance":
        self.proc = launch(self.config, self.log, self.prefix)
        try:
            wait_ready(self.url, self.proc, self.log)
        except ShifterError:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, as a service manager would (pulls in flight resume at the next start)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


# -- the site's gateway --------------------------------------------------------------------------


def state_dir(site: Site) -> str:
    return os.path.join(site.root, "gateway")


def config_path(site: Site) -> str:
    return os.path.join(site.etc, "imagemanager.json")


def log_path(site: Site) -> str:
    return os.path.join(site.log, "gateway.log")


def url(site: Site) -> str:
    return f"http://127.0.0.1:{site.gateway_port}"


def _stamp_path(site: Site) -> str:
    return os.path.join(site.run, "gateway.json")


def _code_stamp(site: Site) -> str:
    """What code is installed (tools/install's source stamp), so an update restarts the gateway."""
    try:
        with open(os.path.join(site.prefix, ".shifter-source")) as f:
            return f.read().strip()
    except OSError:
        return ""


def write_config(site: Site) -> bool:
    registries = {site.registry_url(): f"http://{site.registry_url()}",
                  site.registry_url(auth=True): f"http://{site.registry_url(auth=True)}"}
    return render_config(config_path(site), system=SYSTEM, image_dir=site.images,
                         munge_socket=site.munge_socket, state_dir=state_dir(site),
                         listen=f"127.0.0.1:{site.gateway_port}", locations=registries,
                         default_location=site.registry_url(), import_users=(TEST_USERS[0][0],))


def _is_ours(pid: int, site: Site) -> bool:
    argv = daemons.live_argv(pid)
    return bool(argv) and os.fsencode(gateway_bin(site.prefix)) in argv[:2] \
        and os.fsencode(config_path(site)) in argv


def _pid(site: Site) -> int | None:
    pid = daemons.read_pid(site.pidfile("gateway"))
    return pid if pid and _is_ours(pid, site) else None


def start(site: Site) -> None:
    """Start the site's gateway (idempotent); return once it answers."""
    for d in (site.etc, site.log, site.run, site.images, state_dir(site)):
        os.makedirs(d, mode=0o755, exist_ok=True)
    changed = write_config(site)
    stamp = {"code": _code_stamp(site)}
    try:
        with open(_stamp_path(site)) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = {}
    pid = _pid(site)
    if pid and not changed and previous == stamp and probe(url(site)) == 200:
        return
    if pid:
        daemons.terminate(pid, STOP_TIMEOUT)
    if probe(url(site)) is not None:
        raise ShifterError(f"can't start the gateway: 127.0.0.1:{site.gateway_port} is in use by "
                           "another process", f"ss -ltnp 'sport = :{site.gateway_port}'")
    proc = launch(config_path(site), log_path(site), site.prefix)
    with open(site.pidfile("gateway"), "w") as f:
        f.write(f"{proc.pid}\n")
    try:
        wait_ready(url(site), proc, log_path(site))
    except ShifterError:
        daemons.terminate(proc.pid, STOP_TIMEOUT)
        raise
    with open(_stamp_path(site), "w") as f:
        json.dump(stamp, f)


def stop(site: Site) -> None:
    """Stop the gateway our pidfile names (and nothing else)."""
    pid = _pid(site)
    if pid:
        daemons.terminate(pid, STOP_TIMEOUT)
    for path in (site.pidfile("gateway"), _stamp_path(site)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def status(site: Site) -> dict:
    pid = _pid(site)
    return {"url": url(site), "pid": pid, "http": probe(url(site)) if pid else None,
            "config": config_path(site), "log": log_path(site), "state": state_dir(site)}


def main(argv: list[str] | None = None) -> int:
    return daemons.service_main(argv, "tools/run-module gateway", "Run the test site's image gateway.", start, stop, status)


if __name__ == "__main__":
    sys.exit(main())
