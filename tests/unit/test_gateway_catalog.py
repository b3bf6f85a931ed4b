"""The SQLite catalog (shifter.gateway.catalog): records, tags, completion, ACL decisions,
expiry, persistence and the one-gateway-per-catalog lock (no root, no network)."""

from __future__ import annotations

import threading

import pytest

from shifter.errors import ConfigError
from shifter.gateway.catalog import (API_FIELDS, Catalog, ImageFields, Requester, acl_for)

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
    def publish(final, is_new):
        if published is not None:
            published.append((final.image_id, is_new))
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
    expired = catalog.expire(image.rid, lambda r: removed.append(r.image_id))
    assert removed == [ID1] and expired.status == "EXPIRED" and expired.tags == ()
    assert catalog.ready_by_tag("sys", "docker", "app:1") is None
    assert catalog.list_queue("sys") == [] and catalog.list_ready("sys") == []


def test_a_publish_failure_commits_nothing(catalog):
    req = catalog.create_request("sys", "docker", "app:1", ALICE)

    def boom(final, is_new):
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


def test_acl_decisions(catalog):
    private = pulled(catalog, "priv:1", users=(1001,), image_id=ID2)
    public = pulled(catalog, "pub:1", image_id=ID1)
    # a new image gets what was asked
    assert acl_for(None, BOB, (1002, 1002), ()) == ((1002,), (), "")
    # members of a private ACL and admins may change it (making it public too)
    assert acl_for(private, ALICE, (), ()) == ((), (), "")
    assert acl_for(private, ADMIN, (7,), (8,)) == ((7,), (8,), "")
    # a plain user can't make a public image private
    users, groups, note = acl_for(public, BOB, (1002,), ())
    assert (users, groups) == ((), ()) and "already public" in note
    assert acl_for(public, ADMIN, (1002,), ()) == ((1002,), (), "")
    # someone outside a private ACL who fetched the same content is added, nothing else
    users, groups, note = acl_for(private, BOB, (), ())
    assert users == (1001, 1002) and groups == () and "1002 was added" in note


def test_completion_applies_the_acl_decision(catalog):
    private = pulled(catalog, "priv:1", users=(1001,), image_id=ID2)
    req = catalog.create_request("sys", "docker", "priv:other", BOB)  # same content, public ask
    final = complete(catalog, req.rid, image_id=ID2)
    assert final.rid == private.rid and final.user_acl == (1001, 1002)
    assert "added" in final.status_message
