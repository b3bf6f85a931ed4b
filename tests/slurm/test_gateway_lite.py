"""The hot-path lookup (SPANK plugin, launcher) goes over one plain socket, never importing
requests, http.client or subprocess, with the client's failover and errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slurm

PROBE = textwrap.dedent("""\
    import sys
    from shifter.runtime import config
    from shifter.gateway_client.resolve import resolve_id
    from shifter.runtime.image import parse_image
    from shifter.errors import ShifterError
    c = config.load(sys.argv[1])
    try:
        print(resolve_id(c, parse_image(sys.argv[2], c)).tag)
    except ShifterError as e:
        print("error:", e)
    print("requests imported:", any(m in sys.modules for m in ("requests", "http.client", "subprocess")))
    """)


def _conf(site, tmp_path, gateways):
    from shifter import templates

    path = tmp_path / "udiRoot.conf"
    templates.write("udiRoot.conf", str(path), **site.udiroot_context(image_gateways=gateways))
    return str(path)


def _probe(conf, image):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    res = subprocess.run([sys.executable, "-c", PROBE, conf, image], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def test_lookup_without_requests_and_with_failover(cluster, runner, tmp_path):
    expected = runner.run(["shifterimg", "lookup", "docker:test/busybox:latest"], check=True).stdout.strip()
    conf = _conf(cluster, tmp_path, ["http://127.0.0.1:9", f"http://127.0.0.1:{cluster.gateway_port}"])
    assert _probe(conf, "docker:test/busybox:latest") == [expected, "requests imported: False"]
    out = _probe(conf, "docker:test/not-pulled:latest")
    assert out[0].startswith("error: ") and "not-pulled" in out[0] and "requests imported: False" == out[1]
    dead = _conf(cluster, tmp_path, ["http://127.0.0.1:9"])
    out = _probe(dead, "docker:test/busybox:latest")
    assert out[0].startswith("error: can't reach the image gateway") and "127.0.0.1:9" in out[0]
