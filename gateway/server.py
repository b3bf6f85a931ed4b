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
WORKDIR, LABELS, last_pull, status_message.  Every error is ``{"status": N, "error": ...,
"message": "ERROR (hint: ...): URL"}`` (Shifter's shape): N = 400/401/403/404 (see
``errors``), 404/405/413 from routing and body size, and 400/414/431/505 from the HTTP layer
(``RequestHandler``); a 500 is always a bug.  Paths are matched as sent: no redirect for a
missing trailing ``/`` or for ``//`` (``%2F`` decodes to ``/``), so no answer is ever HTML.
Whatever a request puts in the log is escaped (``logs``).

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
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect
from werkzeug.serving import WSGIRequestHandler, make_server

from shifter import command, paths
from shifter.errors import ShifterError, describe
from shifter.gateway import config as gwconfig
from shifter.gateway import logs
from shifter.gateway.catalog import Catalog
from shifter.gateway.errors import ApiError, BadRequest
from shifter.gateway.manager import ImageManager, parse_ids

log = logging.getLogger("shifter.gateway")
AUTH_HEADER = "authentication"
MAX_BODY = 64 * 1024
MAX_METRICS = 100000
MAX_LOGGED_PATH = 300
API_PATHS = "/api/{list,lookup,pull,doimport,expire,autoexpire,queue,metrics}/SYSTEM/..."


def error_body(status: int, error: str, hint: str | None, url: str) -> dict:
    """Shifter's error body: ``{"status": N, "error": ERROR, "message": "ERROR (hint: H): URL"}``."""
    message = describe(error, hint)
    return {"status": status, "error": error, "message": f"{message}: {url}"}


def _json(data, status: int = 200) -> Response:
    return Response(json.dumps(data) + "\n", status=status, mimetype="application/json")


def _error(status: int, error: str, hint: str | None = None) -> Response:
    return _json(error_body(status, error, hint, request.url), status)


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
    except RecursionError:  # [[[[... : the decoder recurses once per level
        raise BadRequest("the request body is nested too deeply",
                         'send {"allowed_uids": "...", "allowed_gids": "..."}') from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _http_error(e: HTTPException) -> tuple[int, str, str | None]:
    """Status, error and hint for an error raised by routing or request parsing."""
    code = e.code or 400
    if isinstance(e, NotFound):
        return code, "no API call has this path", f"the API's paths are {API_PATHS} and end in /"
    if isinstance(e, MethodNotAllowed):
        allowed = ", ".join(m for m in (e.valid_methods or []) if m not in ("HEAD", "OPTIONS"))
        return code, f"method {request.method[:20]} is not allowed on this path", \
            f"use {allowed}" if allowed else None
    if code == 413:
        return code, f"the request body is larger than {MAX_BODY} bytes", None
    return code, f"{e.name}: {e.description}" if e.description else e.name, None


class _Api(Flask):
    def handle_http_exception(self, e: HTTPException):
        # Flask hands routing's redirects back as they are (an HTML page); none is expected
        # with the URL map of create_app, but one would get the API's JSON shape too
        if isinstance(e, RequestRedirect):
            e = NotFound()
        return super().handle_http_exception(e)


def create_app(manager: ImageManager) -> Flask:
    logs.install("shifter.gateway", "werkzeug")
    app = _Api("shifter.gateway")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    # match paths as sent: werkzeug would answer '//' (a decoded %2F) or a missing final '/'
    # with an HTML redirect, which no client of this API wants
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    _add_error_handlers(app)
    _add_routes(app, manager)
    return app


def _add_error_handlers(app: Flask) -> None:
    """Every request is logged; every error is answered as the API's JSON error, with its reason."""

    def where() -> str:
        return request.full_path.rstrip("?")[:MAX_LOGGED_PATH]

    @app.after_request
    def access_log(response):
        if response.status_code < 400:  # errors are logged with their reason below
            log.info("%s %s -> %d", request.method[:20], where(), response.status_code)
        return response

    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        log.info("%s %s -> %d: %s", request.method[:20], where(), e.http_status, e.what)
        return _error(e.http_status, e.what, e.hint)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        code, error, hint = _http_error(e)
        log.info("%s %s -> %d: %s", request.method[:20], where(), code, error)
        return _error(code, error, hint)

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        log.exception("internal error serving %s %s", request.method[:20], where())
        return _error(500, f"internal error: {type(e).__name__}")


def _add_routes(app: Flask, manager: ImageManager) -> None:
    """The REST API (Shifter's imagegw paths)."""

    def session(system: str):
        return manager.session(system, request.headers.get(AUTH_HEADER))

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


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


class RequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, with the errors of the HTTP layer itself (request line
    over 64 KiB: 414; a header line over 64 KiB or more than 100 headers: 431; a malformed
    request line: 400; an HTTP version it does not speak: 505) in the API's JSON shape
    instead of http.server's HTML page, logged like every other error."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        short = self.responses.get(code, ("Error", ""))[0]
        hint = None
        if code == 414:
            error, hint = "the request line is longer than 65536 bytes", "image names are short: check the URL"
        elif code == 431:
            error = f"the request headers are too large: {(message or short).lower()}"
            hint = "a request has at most 100 header lines of at most 65536 bytes each"
        else:
            error = message or short
        words = (getattr(self, "requestline", "") or "").split()  # as sent ('' for a 414)
        method = words[0] if words else "-"
        path = words[1] if len(words) > 1 else ""
        host, port = self.server.server_address[:2]
        log.info("%s %s -> %d: %s", method[:20], path[:MAX_LOGGED_PATH] or "-", code, error)
        body = (json.dumps(error_body(code, error, hint, f"http://{host}:{port}{path}")) + "\n").encode()
        if getattr(self, "request_version", "") == "HTTP/0.9":  # unparsed (bad version): still a
            self.request_version = "HTTP/1.0"  # status line and headers, not a bare body
        self.send_response(code, short)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 205, 304):
            self.wfile.write(body)


def serve(config: gwconfig.GatewayConfig, listen: tuple[str, int] | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we log requests ourselves
    for notice in config.notices:
        log.warning("notice: %s: %s", config.path, notice)
    catalog = Catalog(config.catalog_file)
    manager = ImageManager(config, catalog)
    host, port = listen or config.listen
    try:
        server = make_server(host, port, create_app(manager), threaded=True,
                             request_handler=RequestHandler)
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
    return command.run("shifter-gateway", _main, argv)


def _main(argv: list[str]) -> int:
    parser = command.parser_class()(prog="shifter-gateway",
                                     description="Shifter's image gateway: pull, convert and serve images.")
    parser.add_argument("--config", default=os.environ.get("GWCONFIG") or
                        os.path.join(paths.PREFIX, "etc", "imagemanager.json"),
                        help="imagemanager.json (default: $GWCONFIG, else <prefix>/etc/imagemanager.json)")
    parser.add_argument("--listen", type=_parse_listen, default=None,
                        help="HOST:PORT to bind (default: the config's Listen, else 127.0.0.1:8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    logs.install(handlers=True)
    config = gwconfig.load(args.config)
    logging.getLogger().setLevel(config.log_level.upper())
    serve(config, args.listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
