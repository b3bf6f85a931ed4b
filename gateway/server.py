"""``shifter-gateway``: Shifter's image gateway REST API (Flask), and its command line.

Routes (Shifter's; every path ends in ``/``; ``<tag>`` may contain ``/``)::

    GET  /api/list/<system>/                       {"list": [record, ...]}
    GET  /api/lookup/<system>/<type>/<tag>/        record (READY images only)
    POST /api/pull/<system>/<type>/<tag>/          record; body {"allowed_uids": "1,2", "allowed_gids": ...}
    POST /api/doimport/<system>/<type>/<tag>/      record; body {"filepath": ..., "format": "squashfs", ...}
    GET  /api/expire/<system>/<type>/<tag>/        {"status": true}           (admins)
    GET  /api/autoexpire/<system>/                 {"status": [ids expired]}  (admins)
    GET  /api/queue/<system>/                      {"list": [{"status": ..., "image": tag}]}
    GET  /api/metrics/<system>/?limit=N            [lookup, ...]              (admins)

A record has exactly: id, system, itype, tag (list), status, userACL, groupACL, ENV, ENTRY,
WORKDIR, LABELS, last_pull, status_message.  Errors are ``{"status": N, "error": ...,
"message": ...}`` with N = 400/401/403/404 (see ``errors``); a 500 is always a bug.

Usage: ``shifter-gateway [--config imagemanager.json] [--listen HOST:PORT]``; the config
defaults to ``$GWCONFIG``, else ``<prefix>/etc/imagemanager.json``.  SIGTERM/SIGINT stop it;
pulls in flight resume at the next start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from shifter import paths
from shifter.errors import ShifterError
from shifter.gateway import config as gwconfig
from shifter.gateway.catalog import Catalog
from shifter.gateway.errors import ApiError, BadRequest
from shifter.gateway.manager import ImageManager, parse_ids

log = logging.getLogger("shifter.gateway")
AUTH_HEADER = "authentication"
MAX_BODY = 64 * 1024
MAX_METRICS = 100000


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data) + "\n", status=status, mimetype="application/json")


def _error(status: int, error: str, hint: str | None = None) -> Response:
    message = f"{error} (hint: {hint})" if hint else error
    body = {"status": status, "error": error, "message": f"{message}: {request.url}"}
    return _json(body, status)


def _body() -> dict:
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the request body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def create_app(manager: ImageManager) -> Flask:
    app = Flask("shifter.gateway")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def session(system: str):
        return manager.session(system, request.headers.get(AUTH_HEADER))

    @app.after_request
    def access_log(response):
        if response.status_code < 400:  # errors are logged with their reason below
            log.info("%s %s -> %d", request.method, request.full_path.rstrip("?"), response.status_code)
        return response

    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        log.info("%s %s -> %d: %s", request.method, request.path, e.http_status, e.message)
        return _error(e.http_status, e.message, e.hint)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        log.info("%s %s -> %d: %s", request.method, request.path, e.code or 400, e.name)
        return _error(e.code or 400, e.description or e.name)

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        log.exception("internal error serving %s %s", request.method, request.path)
        return _error(500, f"internal error: {type(e).__name__}")

    @app.get("/")
    def apihelp():
        return Response("{lookup,pull,expire,list}", mimetype="text/plain")

    @app.get("/api/list/<system>/")
    def imglist(system):
        return _json({"list": [r.api() for r in manager.images(session(system))]})

    @app.get("/api/lookup/<system>/<itype>/<path:tag>/")
    def lookup(system, itype, tag):
        return _json(manager.lookup(session(system), itype, tag).api())

    @app.post("/api/pull/<system>/<itype>/<path:tag>/")
    def pull(system, itype, tag):
        s = session(system)
        data = _body()
        record = manager.pull(s, itype, tag, parse_ids(data.get("allowed_uids"), "allowed_uids"),
                              parse_ids(data.get("allowed_gids"), "allowed_gids"))
        return _json(record.api())

    @app.post("/api/doimport/<system>/<itype>/<path:tag>/")
    def doimport(system, itype, tag):
        s = session(system)
        data = _body()
        record = manager.doimport(s, itype, tag, data.get("filepath"), data.get("format", "squashfs"),
                                  parse_ids(data.get("allowed_uids"), "allowed_uids"),
                                  parse_ids(data.get("allowed_gids"), "allowed_gids"))
        return _json(record.api())

    @app.get("/api/expire/<system>/<itype>/<path:tag>/")
    def expire(system, itype, tag):
        return _json({"status": manager.expire(session(system), itype, tag)})

    @app.get("/api/autoexpire/<system>/")
    def autoexpire(system):
        return _json({"status": manager.autoexpire(session(system))})

    @app.get("/api/queue/<system>/")
    def queue(system):
        credential = request.headers.get(AUTH_HEADER)
        s = manager.session(system, credential) if credential else manager.public_session(system)
        return _json({"list": manager.queue(s)})

    @app.get("/api/metrics/<system>/")
    def metrics(system):
        value = request.args.get("limit", "10")
        if not value.isdigit() or not 0 < int(value) <= MAX_METRICS:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_METRICS}, not {value[:20]!r}")
        return _json(manager.metrics(session(system), int(value)))

    return app


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def serve(config: gwconfig.GatewayConfig, listen: tuple[str, int] | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we log requests ourselves
    for notice in config.notices:
        log.warning("notice: %s: %s", config.path, notice)
    catalog = Catalog(config.catalog_file)
    manager = ImageManager(config, catalog)
    host, port = listen or config.listen
    try:
        server = make_server(host, port, create_app(manager), threaded=True)
    except OSError as e:
        catalog.close()
        raise ShifterError(f"can't listen on {host}:{port}: {e.strerror}",
                           "is another gateway running? (ss -ltnp)") from None
    manager.start()

    def stop(signum, frame):
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("shifter-gateway serving %s on http://%s:%d (catalog %s)",
             ", ".join(config.platforms), host, port, config.catalog_file)
    try:
        server.serve_forever()
    finally:
        manager.stop()
        catalog.close()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shifter-gateway",
                                     description="Shifter's image gateway: pull, convert and serve images.")
    parser.add_argument("--config", default=os.environ.get("GWCONFIG") or
                        os.path.join(paths.PREFIX, "etc", "imagemanager.json"),
                        help="imagemanager.json (default: $GWCONFIG, else <prefix>/etc/imagemanager.json)")
    parser.add_argument("--listen", type=_parse_listen, default=None,
                        help="HOST:PORT to bind (default: the config's Listen, else 127.0.0.1:8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = gwconfig.load(args.config)
        logging.getLogger().setLevel(config.log_level.upper())
        serve(config, args.listen)
    except ShifterError as e:
        print(f"shifter-gateway: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
