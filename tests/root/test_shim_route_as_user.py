"""The compiled SPANK shim run as another user than root (nobody): an id: image the user
cannot open is left to Python, which refuses it; one the user can open needs no Python;
with enable_sshd a user without a key pair goes to Python.  The rest of the shim's routes
are tests/unit/test_shim_route.py."""

from __future__ import annotations

import pytest

from helpers.shim import A, MISSING, NOBODY, NOT_YOURS, PRIVATE, run_shim, shim_site

pytestmark = pytest.mark.root  # runs the harness as another user


@pytest.fixture(scope="module")
def shim():
    """Fake images, udiRoot.conf and the compiled harness (helpers.shim), world-readable."""
    with shim_site() as s:
        yield s


@pytest.mark.parametrize("image_id", [MISSING, PRIVATE], ids=["missing", "private to root"])
@pytest.mark.parametrize("context", ["allocator", "local"])
def test_an_id_the_user_cannot_open_is_left_to_python_which_refuses_it(shim, image_id, context):
    out = run_shim(shim, context, {}, [("image", f"id:{image_id}")], user=NOBODY)
    assert out["python"] and out["rc"] == -1, out
    assert out["errors"] == [f"shifter: can't use image id:{image_id}: {NOT_YOURS} (hint: 'shifterimg images' "
                             "lists the images you may use; 'shifterimg lookup IMAGE' prints an id)"]
    assert "SHIFTER_IMAGE" not in out["control"]


def test_an_id_the_user_can_open_needs_no_python(shim):
    out = run_shim(shim, "allocator", {}, [("image", f"id:{A}")], user=NOBODY)
    assert not out["python"] and out["rc"] == 0 and out["control"]["SHIFTER_IMAGE"] == A, out


def test_with_enable_sshd_a_user_without_key_pair_goes_to_python_which_makes_it(shim):
    """enable_sshd=1: the shim keeps a submission of --image=id: only when the user's
    ~/.udiRoot/id_rsa.key is there (docs/sshd.md); nobody's home does not exist, so
    Python is asked, and refuses in one line; root's jobs need no key."""
    plug = [f"shifter_config={shim['conf']}", "enable_sshd=1"]
    out = run_shim(shim, "allocator", {}, [("image", f"id:{A}")], plugstack=plug, user=NOBODY)
    assert out["python"] and out["rc"] == -1, out
    assert len(out["errors"]) == 1 and "can't create your container ssh key in /nonexistent/.udiRoot" in \
        out["errors"][0], out
    out = run_shim(shim, "allocator", {}, [("image", f"id:{A}")], plugstack=plug)  # as root
    assert not out["python"] and out["rc"] == 0, out
