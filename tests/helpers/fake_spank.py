"""An in-memory SpankHandle (``shifter.spank.handle``) for unit tests."""

from __future__ import annotations


class FakeSpank:
    """An in-memory SpankHandle for unit tests."""

    def __init__(self, context: int, job_id: int | None = 7, uid: int = 4242, gid: int = 4242,
                 env: dict | None = None):
        self.context = context
        self._job_id, self._uid, self._gid = job_id, uid, gid
        self.env = dict(env or {})
        self.control_env: dict[str, str] = {}
        self.errors: list[str] = []
        self.infos: list[str] = []

    def job_id(self):
        return self._job_id

    def job_uid(self):
        return self._uid

    def job_gid(self):
        return self._gid

    def getenv(self, name):
        return self.env.get(name)

    def setenv(self, name, value, overwrite=True):
        if overwrite or name not in self.env:
            self.env[name] = value
        return True

    def job_control_setenv(self, name, value, overwrite=True):
        if overwrite or name not in self.control_env:
            self.control_env[name] = value
        return True

    def error(self, msg):
        self.errors.append(msg)

    def info(self, msg):
        self.infos.append(msg)

    verbose = info
