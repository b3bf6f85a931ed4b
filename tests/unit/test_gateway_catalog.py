"""The SQLite catalog (shifter.gateway.catalog): records, tags, completion, private records
beside public ones, lookup preference, expiry, persistence, the migration of a version-1
catalog and the one-gateway-per-catalog lock (no root, no network)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading

import pytest

from shifter.errors import ConfigError
from shifter.gateway.catalog import (API_FIELDS, PUBLIC_SHARED_NOTE, SCHEMA_VERSION, Catalog,
                                     ImageFields, Requester)

ALICE = Requester("alice", 1001, frozenset({1001, 500}))
BOB = Requester("bob", 1002, frozenset({1002}))
CAROL = Requester("carol", 1003, frozenset({1003, 500}))
ADMIN = Requester("admin", 1999, frozenset({1999}), admin=True)
ID1, ID2 = "1" * 64, "2" * 64


@pytest.fixture
def catalog(tmp_path):
    c = Catalog(str(tmp_path / "catalog.sqlite"))
    yield c
    c.close()


def complete(catalog, rid, image_id=ID1, published=None, **fields):
    def publish(final, access, is_new):
        if published is not None:
            published.append((final.image_id, is_new))
        catalog.last_access = access
    return catalog.complete(rid, ImageFields(image_id, **fields), 2e9, publish)


def pulled(catalog, tag="app:1", who=ALICE, users=(), groups=(), image_id=ID1):
    req = catalog.create_request("sys", "docker", tag, who, users, groups)
    return complete(catalog, req.rid, image_id)


def test_a_request_becomes_a_ready_image_with_exactly_shifters_fields(catalog):
    req = catalog.create_request("sys", "docker", "app:1", ALICE)
    assert req.status == "PENDING" and req.tags == () and req.image_id is None
    assert catalog.request_for_tag("sys", "docker", "app:1").rid == req.rid
    catalog.set_status(req.rid, "PULLING", "downloading")
    published = []
    final = complete(catalog, req.rid, published=published, env=("A=1",), entry=["/e"], cmd=["c"],
                     workdir="/w", labels={"k": "v"})
    assert published == [(ID1, True)]
    api = final.api()
    assert tuple(api) == API_FIELDS
    assert api["id"] == ID1 and api["status"] == "READY" and api["tag"] == ["app:1"]
    assert api["ENV"] == ["A=1"] and api["ENTRY"] == ["/e"] and api["WORKDIR"] == "/w"
    assert api["LABELS"] == {"k": "v"} and api["userACL"] == [] and api["status_message"] == ""
    assert catalog.request_for_tag("sys", "docker", "app:1") is None
    assert catalog.ready_by_tag("sys", "docker", "app:1").rid == final.rid


def test_a_pull_of_an_image_already_here_only_adds_its_tag(catalog):
    first = pulled(catalog, "app:1")
    req = catalog.create_request("sys", "docker", "app:also", BOB)
    published = []
    final = complete(catalog, req.rid, published=published)
    assert final.rid == first.rid and published == [(ID1, False)]
    assert final.tags == ("app:1", "app:also")
    assert catalog.get(req.rid) is None  # the request folded into the image
    assert len(catalog.list_ready("sys")) == 1


def test_a_tag_moves_to_the_new_image(catalog):
    old = pulled(catalog, "app:latest", image_id=ID1)
    new = pulled(catalog, "app:latest", image_id=ID2)
    assert catalog.get(old.rid).tags == () and catalog.get(old.rid).status == "READY"
    assert catalog.ready_by_tag("sys", "docker", "app:latest").rid == new.rid


def test_failed_requests_are_replaced_by_the_next_one(catalog):
    req = catalog.create_request("sys", "docker", "app:1", ALICE)
    catalog.fail(req.rid, "registry said no")
    assert catalog.get(req.rid).status == "FAILURE"
    assert catalog.request_for_tag("sys", "docker", "app:1") is None
    again = catalog.create_request("sys", "docker", "app:1", ALICE)
    assert catalog.get(req.rid) is None and again.status == "PENDING"
    assert [r.rid for r in catalog.list_queue("sys")] == [again.rid]


def test_expire_removes_files_and_tags(catalog):
    image = pulled(catalog, "app:1")
    removed = []
    expired = catalog.expire(image.rid, lambda r, access: removed.append((r.image_id, access)))
    assert removed == [(ID1, None)] and expired.status == "EXPIRED" and expired.tags == ()
    assert catalog.ready_by_tag("sys", "docker", "app:1") is None
    assert catalog.list_queue("sys") == [] and catalog.list_ready("sys") == []


def test_a_publish_failure_commits_nothing(catalog):
    req = catalog.create_request("sys", "docker", "app:1", ALICE)

    def boom(final, access, is_new):
        raise OSError("disk full")

    with pytest.raises(OSError):
        catalog.complete(req.rid, ImageFields(ID1), 2e9, boom)
    assert catalog.get(req.rid).status == "PENDING" and catalog.ready_by_id("sys", ID1) is None


def test_the_catalog_survives_a_restart_and_is_one_gateways(tmp_path):
    path = str(tmp_path / "c.sqlite")
    c = Catalog(path)
    pulled(c, "app:1", users=(1001,))
    running = c.create_request("sys", "docker", "app:2", BOB)
    c.set_status(running.rid, "CONVERSION")
    with pytest.raises(ConfigError, match="another gateway .* is using it"):
        Catalog(path)
    c.close()
    c = Catalog(path)
    assert c.ready_by_tag("sys", "docker", "app:1").user_acl == (1001,)
    assert [r.status for r in c.in_flight()] == ["CONVERSION"]
    c.close()


def test_concurrent_writers_serialise(catalog):
    errors = []

    def work(n):
        try:
            for i in range(20):
                req = catalog.create_request("sys", "docker", f"t{n}:{i}", ALICE)
                complete(catalog, req.rid, image_id=f"{n:02d}{i:062d}")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(catalog.list_ready("sys")) == 80


# -- ACL decisions -------------------------------------------------------------------------------


def test_readable_by(catalog):
    public = pulled(catalog, "pub:1", image_id=ID1)
    private = pulled(catalog, "priv:1", users=(1001,), groups=(500,), image_id=ID2)
    assert all(public.readable_by(w) for w in (ALICE, BOB, CAROL))
    assert private.readable_by(ALICE) and private.readable_by(CAROL)  # uid, group 500
    assert not private.readable_by(BOB)
    assert private.readable_by(ADMIN) and private.readable_by(Requester("root", 0))


def test_a_private_record_lives_beside_the_public_one(catalog):
    public = pulled(catalog, "app:1", who=BOB, image_id=ID1)
    assert catalog.last_access == ((), ())
    private = pulled(catalog, "app:1", who=ALICE, users=(1001, 7), image_id=ID1)
    assert private.rid != public.rid and private.user_acl == (7, 1001)
    assert private.tags == ("app:1",) and catalog.get(public.rid).tags == ("app:1",)
    # the files stay public (the most public record), and the private record says so
    assert catalog.last_access == ((), ())
    assert private.status_message == PUBLIC_SHARED_NOTE
    assert catalog.get(public.rid).status_message == ""
    # the other users keep the public record; the owner gets theirs
    assert catalog.ready_by_tag("sys", "docker", "app:1", BOB).rid == public.rid
    assert catalog.ready_by_tag("sys", "docker", "app:1", CAROL).rid == public.rid
    assert catalog.ready_by_tag("sys", "docker", "app:1", ALICE).rid == private.rid
    assert catalog.ready_by_tag("sys", "docker", "app:1", Requester("x", 7)).rid == private.rid
    # root and admins are not "named": they get the public record
    assert catalog.ready_by_tag("sys", "docker", "app:1", ADMIN).rid == public.rid
    assert catalog.ready_by_tag("sys", "docker", "app:1", Requester("root", 0)).rid == public.rid
    assert len(catalog.list_ready("sys")) == 2


def test_the_same_acl_in_another_order_is_the_same_record(catalog):
    first = pulled(catalog, "app:1", users=(1001, 1002), groups=(9, 500))
    again = pulled(catalog, "app:1", users=(1002, 1001, 1001), groups=(500, 9))
    assert again.rid == first.rid and len(catalog.list_ready("sys")) == 1
    assert catalog.ready_for_acl("sys", "docker", "app:1", (1002, 1001), (500, 9)).rid == first.rid
    assert catalog.ready_for_acl("sys", "docker", "app:1", (1001,), ()) is None
    assert catalog.ready_for_acl("sys", "docker", "app:1") is None  # no public record


def test_private_records_of_one_id_share_files_readable_by_their_union(catalog):
    a = pulled(catalog, "app:1", who=ALICE, users=(1001,), image_id=ID1)
    assert catalog.last_access == ((1001,), ())
    b = pulled(catalog, "app:1", who=BOB, groups=(1002,), image_id=ID1)
    assert a.rid != b.rid and catalog.last_access == ((1001,), (1002,))
    assert catalog.ready_by_tag("sys", "docker", "app:1", BOB).rid == b.rid
    assert catalog.ready_by_tag("sys", "docker", "app:1", CAROL) is None  # nothing for her
    # expiring one narrows the files to the other record's ACL
    seen = []
    catalog.expire(b.rid, lambda r, access: seen.append(access))
    assert seen == [((1001,), ())]
    catalog.expire(a.rid, lambda r, access: seen.append(access))
    assert seen[-1] is None  # the last record: remove the files


def test_the_note_goes_when_the_public_record_does(catalog):
    public = pulled(catalog, "app:1", who=BOB, image_id=ID1)
    private = pulled(catalog, "app:1", who=ALICE, users=(1001,), image_id=ID1)
    assert catalog.get(private.rid).status_message == PUBLIC_SHARED_NOTE
    seen = []
    catalog.expire(public.rid, lambda r, access: seen.append(access))
    assert seen == [((1001,), ())] and catalog.get(private.rid).status_message == ""


def test_a_private_tag_moves_alone(catalog):
    public = pulled(catalog, "app:latest", who=BOB, image_id=ID1)
    old = pulled(catalog, "app:latest", who=ALICE, users=(1001,), image_id=ID1)
    new = pulled(catalog, "app:latest", who=ALICE, users=(1001,), image_id=ID2)
    assert new.rid != old.rid and catalog.get(old.rid).tags == ()
    assert catalog.get(public.rid).tags == ("app:latest",)
    assert catalog.ready_by_tag("sys", "docker", "app:latest", ALICE).rid == new.rid
    assert catalog.ready_by_tag("sys", "docker", "app:latest", BOB).rid == public.rid


def test_requests_in_flight_are_per_acl(catalog):
    pub = catalog.create_request("sys", "docker", "app:1", BOB)
    priv = catalog.create_request("sys", "docker", "app:1", ALICE, (1001,), ())
    assert catalog.request_for_tag("sys", "docker", "app:1").rid == pub.rid
    assert catalog.request_for_tag("sys", "docker", "app:1", (1001,), ()).rid == priv.rid
    catalog.fail(priv.rid, "no")
    again = catalog.create_request("sys", "docker", "app:1", ALICE, (1001,), ())
    assert catalog.get(priv.rid) is None and catalog.get(pub.rid).status == "PENDING"
    assert again.status == "PENDING"


# -- migration of a version-1 catalog --------------------------------------------------------------

# The schema as version 1 of the gateway created it (kept verbatim: the migration's input).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS images (
    rid INTEGER PRIMARY KEY AUTOINCREMENT, system TEXT NOT NULL, itype TEXT NOT NULL,
    pulltag TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'pull', image_id TEXT, status TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '', user_acl TEXT NOT NULL DEFAULT '[]',
    group_acl TEXT NOT NULL DEFAULT '[]', env TEXT NOT NULL DEFAULT '[]',
    entry TEXT NOT NULL DEFAULT 'null', cmd TEXT NOT NULL DEFAULT 'null', workdir TEXT,
    labels TEXT NOT NULL DEFAULT '{}', format TEXT NOT NULL DEFAULT 'squashfs', filepath TEXT,
    requester TEXT NOT NULL DEFAULT '', requester_uid INTEGER NOT NULL DEFAULT -1,
    requester_gids TEXT NOT NULL DEFAULT '[]', requester_admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, last_pull REAL NOT NULL, heartbeat REAL NOT NULL, expiration REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_ready_per_id ON images(system, image_id) WHERE status = 'READY';
CREATE INDEX IF NOT EXISTS by_pulltag ON images(system, itype, pulltag);
CREATE TABLE IF NOT EXISTS tags (
    system TEXT NOT NULL, itype TEXT NOT NULL, tag TEXT NOT NULL,
    rid INTEGER NOT NULL REFERENCES images(rid) ON DELETE CASCADE,
    PRIMARY KEY (system, itype, tag)
);
CREATE TABLE IF NOT EXISTS metrics (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL, uid INTEGER NOT NULL, system TEXT NOT NULL, type TEXT NOT NULL,
    tag TEXT NOT NULL, id TEXT NOT NULL, time REAL NOT NULL
);
"""


def _v1_catalog(path):
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_V1)
    db.execute("PRAGMA user_version=1")

    def image(tag, image_id, users=(), status="READY"):
        cur = db.execute(
            "INSERT INTO images (system, itype, pulltag, image_id, status, user_acl, env, created, "
            "last_pull, heartbeat, expiration) VALUES ('sys', 'docker', ?, ?, ?, ?, ?, 1, 2, 3, 4e9)",
            (tag, image_id, status, json.dumps(list(users)), json.dumps(["A=1"])))
        if status == "READY":
            db.execute("INSERT INTO tags VALUES ('sys', 'docker', ?, ?)", (tag, cur.lastrowid))
        return cur.lastrowid

    rids = {"pub": image("pub:1", ID1), "priv": image("priv:1", ID2, users=(1001, 1002)),
            "busy": image("new:1", None, status="PULLING")}
    db.execute("INSERT INTO tags VALUES ('sys', 'docker', 'pub:also', ?)", (rids["pub"],))
    db.execute("INSERT INTO metrics (user, uid, system, type, tag, id, time) "
               "VALUES ('alice', 1001, 'sys', 'docker', 'pub:1', ?, 5)", (ID1,))
    db.commit()
    db.close()
    return rids


def test_a_version_1_catalog_is_migrated(tmp_path):
    path = str(tmp_path / "v1.sqlite")
    rids = _v1_catalog(path)
    c = Catalog(path)
    try:
        assert c.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        pub = c.ready_by_tag("sys", "docker", "pub:1", BOB)
        assert pub.rid == rids["pub"] and pub.tags == ("pub:1", "pub:also") and pub.env == ("A=1",)
        priv = c.ready_by_tag("sys", "docker", "priv:1", ALICE)
        assert priv.rid == rids["priv"] and priv.user_acl == (1001, 1002)
        assert c.ready_by_tag("sys", "docker", "priv:1", CAROL) is None
        assert [r.rid for r in c.in_flight()] == [rids["busy"]]
        assert c.metrics("sys", 10)[0]["id"] == ID1
        # what version 1 could not hold: a private record of the public image, beside it
        mine = pulled(c, "pub:1", who=CAROL, users=(1003,), image_id=ID1)
        assert mine.rid != rids["pub"]
        assert c.ready_by_tag("sys", "docker", "pub:1", CAROL).rid == mine.rid
        assert c.ready_by_tag("sys", "docker", "pub:1", BOB).rid == rids["pub"]
    finally:
        c.close()
    c = Catalog(path)  # opening it again changes nothing
    assert c.ready_by_tag("sys", "docker", "pub:1", CAROL).rid == mine.rid
    c.close()


def test_a_failed_migration_leaves_the_version_1_catalog_as_it_was(tmp_path, monkeypatch):
    from shifter.gateway import catalog as catalog_mod

    path = str(tmp_path / "v1.sqlite")
    _v1_catalog(path)
    monkeypatch.setattr(catalog_mod, "_MIGRATE_1_TO_2",
                        catalog_mod._MIGRATE_1_TO_2 + ";\nSELECT no_such_function()")
    with pytest.raises(ConfigError, match="can't open the catalog"):
        Catalog(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                     "name = 'one_ready_per_id'")] == ["one_ready_per_id"]
    assert db.execute("SELECT count(*) FROM tags").fetchone()[0] == 3
    db.close()


def test_a_newer_catalog_is_refused(tmp_path):
    path = str(tmp_path / "v9.sqlite")
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=9")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="schema version 9 is newer"):
        Catalog(path)


def test_the_migration_keeps_a_copy_an_older_gateway_can_open(tmp_path):
    path = str(tmp_path / "v1.sqlite")
    rids = _v1_catalog(path)
    Catalog(path).close()
    old = sqlite3.connect(path + ".v1")
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    assert old.execute("SELECT rid FROM tags WHERE tag = 'priv:1'").fetchone()[0] == rids["priv"]
    old.close()


def test_of_several_private_records_naming_the_caller_the_newest_wins(catalog):
    pulled(catalog, "app:1", who=BOB, image_id=ID1)
    by_uid = pulled(catalog, "app:1", who=ALICE, users=(1001,), image_id=ID1)
    by_group = pulled(catalog, "app:1", who=CAROL, groups=(500,), image_id=ID2)
    assert catalog.ready_by_tag("sys", "docker", "app:1", ALICE).rid == by_group.rid  # newer
    assert catalog.ready_by_tag("sys", "docker", "app:1", CAROL).rid == by_group.rid
    again = pulled(catalog, "app:1", who=ALICE, users=(1001,), image_id=ID1)
    assert again.rid == by_uid.rid
    assert catalog.ready_by_tag("sys", "docker", "app:1", ALICE).rid == by_uid.rid
    assert catalog.ready_by_tag("sys", "docker", "app:1", BOB).image_id == ID1  # public


# tests/data/gateway-catalog-v1.sqlite was written by the version-1 gateway's own Catalog
# (gateway/catalog.py before schema 2): pub:1 (rid 1, image 1..1, public; also tagged pub:also
# and moved:1, which first named rid 4, image 3..3), priv:1 (rid 3, image 2..2, userACL [1001],
# groupACL [500]), busy:1 in CONVERSION, bad:1 FAILED, one metric.
V1_FILE = os.path.join(os.path.dirname(__file__), "..", "data", "gateway-catalog-v1.sqlite")
ID3 = "3" * 64


def test_a_catalog_written_by_the_version_1_gateway_is_migrated(tmp_path):
    path = str(tmp_path / "catalog.sqlite")
    shutil.copy(V1_FILE, path)
    c = Catalog(path)
    try:
        pub = c.ready_by_tag("sys", "docker", "pub:1", BOB)
        assert (pub.rid, pub.image_id, pub.tags) == (1, ID1, ("moved:1", "pub:1", "pub:also"))
        assert pub.env == ("A=1",) and pub.entry == ["/e"] and pub.workdir == "/w"
        priv = c.ready_by_tag("sys", "docker", "priv:1", CAROL)  # CAROL is in group 500
        assert (priv.rid, priv.user_acl, priv.group_acl) == (3, (1001,), (500,))
        assert c.ready_by_tag("sys", "docker", "priv:1", BOB) is None
        assert c.get(4).image_id == ID3 and c.get(4).tags == ()
        assert [r.pulltag for r in c.in_flight()] == ["busy:1"]
        assert [r.pulltag for r in c.list_queue("sys")] == ["busy:1", "bad:1"]
        assert [m["tag"] for m in c.metrics("sys", 5)] == ["pub:1"]
        # schema 2 at work on the migrated data: a private record beside the public pub:1
        mine = pulled(c, "pub:1", who=CAROL, users=(1003,), image_id=ID1)
        assert c.ready_by_tag("sys", "docker", "pub:1", CAROL).rid == mine.rid
        assert c.ready_by_tag("sys", "docker", "pub:1", ALICE).rid == 1
    finally:
        c.close()
    assert os.path.exists(path + ".v1")
