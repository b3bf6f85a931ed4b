import pytest

from shifter.errors import UsageError
from shifter.runtime import config
from shifter.runtime.image import ImageRef, parse_image

ID = "0123456789abcdef" * 4


@pytest.mark.parametrize("spec, expected", [
    ("docker:test/busybox:latest", ImageRef("docker", "test/busybox:latest")),
    ("docker:test/busybox", ImageRef("docker", "test/busybox:latest")),
    ("test/busybox:1.0", ImageRef("docker", "test/busybox:1.0")),
    ("ubuntu:22.04", ImageRef("docker", "ubuntu:22.04")),
    ("ubuntu", ImageRef("docker", "ubuntu:latest")),
    ("docker:127.0.0.1:5000/test/busybox:x", ImageRef("docker", "127.0.0.1:5000/test/busybox:x")),
    ("docker:registry.example.org/a/b-c_d.e:v1.2-rc", ImageRef("docker", "registry.example.org/a/b-c_d.e:v1.2-rc")),
    (f"id:{ID}", ImageRef("id", ID)),
    # pull by digest (item 15)
    (f"docker:test/busybox@sha256:{ID}", ImageRef("docker", f"test/busybox@sha256:{ID}")),
    (f"test/busybox@sha256:{ID}", ImageRef("docker", f"test/busybox@sha256:{ID}")),
    (f"busybox@sha256:{ID}", ImageRef("docker", f"busybox@sha256:{ID}")),
    (f"docker:127.0.0.1:5000/test/busybox@sha256:{ID}",
     ImageRef("docker", f"127.0.0.1:5000/test/busybox@sha256:{ID}")),
])
def test_valid(spec, expected):
    assert parse_image(spec) == expected
    assert str(parse_image(spec)) == f"{expected.type}:{expected.tag}"


@pytest.mark.parametrize("spec, reason", [
    (None, "empty"),
    ("", "empty"),
    ("   ", "empty"),
    ("docker:", "nothing follows"),
    ("id:", "nothing follows"),
    ("id:abc", "64 lowercase hex"),
    (f"id:{ID.upper()}", "64 lowercase hex"),
    ("docker:UPPER/case", "not a valid Docker repository"),
    ("docker:a/../b", "not a valid Docker repository"),
    ("docker:a b", "character ' '"),
    ("docker:a\nb", "character '\\n'"),
    ("docker:$(reboot)", "character '$'"),
    ("docker:x`id`", "character '`'"),
    ("docker:a/b:bad@tag", "is not sha256:<64 lowercase hex digits>"),
    ("docker:a/b@sha256:abc", "is not sha256:<64 lowercase hex digits>"),
    (f"docker:a/b@sha256:{ID.upper()}", "is not sha256:<64 lowercase hex digits>"),
    (f"docker:a/b@sha512:{ID}{ID}", "is not sha256:<64 lowercase hex digits>"),
    (f"docker:a/b@sha256:{ID}@sha256:{ID}", "is not sha256:<64 lowercase hex digits>"),
    (f"docker:a/b:1.0@sha256:{ID}", "a tag and a digest together"),
    (f"docker:A/b@sha256:{ID}", "not a valid Docker repository"),
    ("docker:a/b:-tag", "not a valid Docker tag"),
    ("docker:a/b:" + "t" * 200, "not a valid Docker tag"),
    ("weird:a/b:c", "unknown image type 'weird'"),
    ("custom:Load_Test:v1", "not a valid Docker repository"),
    ("custom:load_test:", "not a valid Docker tag"),
    ("local:/", "not allowed on this system"),
    ("x" * 2000, "longer than"),
])
def test_invalid_says_why_with_hint(spec, reason):
    with pytest.raises(UsageError) as exc:
        parse_image(spec)
    assert reason in str(exc.value)
    assert exc.value.hint
    assert "\n" not in exc.value.message.replace("\\n", "")


def test_default_type_is_used_for_bare_names():
    assert parse_image(ID, default_type="id") == ImageRef("id", ID)
    assert parse_image(ID, config.parse("defaultImageType=id\n")) == ImageRef("id", ID)


def test_custom_and_local():
    allow = config.parse("allowLocalChroot=1\n")
    # imported images (shifterimg import FILE custom:NAME:TAG), resolved by the gateway
    assert parse_image("custom:load_test:v1") == ImageRef("custom", "load_test:v1")
    assert parse_image("custom:load_test") == ImageRef("custom", "load_test:latest")
    assert parse_image("custom:site/image-1.0:v2") == ImageRef("custom", "site/image-1.0:v2")
    assert parse_image("local:/", allow) == ImageRef("local", "/")
    assert parse_image("local:/opt/root", allow) == ImageRef("local", "/opt/root")
    for bad in ("local:relative", "local:/a/../b", "local:/a/", "local://a"):
        with pytest.raises(UsageError) as exc:
            parse_image(bad, allow)
        assert "absolute, normalised path" in str(exc.value)


def test_gateway_names_custom_images_like_docker_ones():
    """shifterimg lookup/import/expire take custom:NAME[:TAG] (no tag: latest); pull refuses it."""
    from shifter.gateway_client.client import image_ref

    assert image_ref("custom:load_test:v1") == ImageRef("custom", "load_test:v1")
    assert image_ref("custom:load_test") == ImageRef("custom", "load_test:latest")
    with pytest.raises(UsageError) as exc:
        image_ref("custom:load_test:v1", allow_custom=False)
    assert "custom images are imported, not pulled" in str(exc.value)
    with pytest.raises(UsageError) as exc:
        image_ref("id:" + ID)
    assert "not ids" in str(exc.value)
