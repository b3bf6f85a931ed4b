import pytest

from shifter import paths
from shifter.errors import ConfigError
from shifter.runtime import config


def test_syntax_comments_and_continuations():
    cfg = config.parse(
        "# comment\n"
        "system=edison  # trailing comment\n"
        "imageGateway=http://a:8000 \\\n"
        "   http://b:8000\n"
        "\n"
        "mungeSocketPath=/run/m/socket\n"
        "siteFs=/a:/a\n"
        "siteFs=/b:/b\n",
        "/x/udiRoot.conf",
    )
    assert cfg.system == "edison"
    assert cfg.imageGateway == ("http://a:8000", "http://b:8000")
    assert cfg.mungeSocketPath == "/run/m/socket"
    assert cfg.raw["siteFs"] == "/a:/a /b:/b"


@pytest.mark.parametrize("text, message", [
    ("system\n", "/x/u.conf:1: expected key=value"),
    ("a=1\n\nimagePath=relative\n", "/x/u.conf:3: imagePath must be an absolute path"),
    ("system=a\nsystem=b\n", "/x/u.conf:2: system is set twice (first at line 1)"),
    ("defaultImageType=rkt\n", "/x/u.conf:1: defaultImageType must be one of"),
    ("gatewayTimeout=soon\n", "/x/u.conf:1: gatewayTimeout must be a whole number"),
])
def test_errors_name_file_line_and_key(text, message):
    with pytest.raises(ConfigError) as exc:
        config.parse(text, "/x/u.conf")
    assert message in str(exc.value)


def test_location_precedence(monkeypatch):
    monkeypatch.delenv("SHIFTER_CONFIG", raising=False)
    assert paths.config_path() == paths.DEFAULT_CONFIG
    assert paths.DEFAULT_CONFIG.endswith("/etc/udiRoot.conf")
    monkeypatch.setenv("SHIFTER_CONFIG", "/env/udiRoot.conf")
    assert paths.config_path() == "/env/udiRoot.conf"
    assert paths.config_path("/plugstack/udiRoot.conf") == "/plugstack/udiRoot.conf"


def test_load_missing_file_names_it():
    with pytest.raises(ConfigError) as exc:
        config.load("/does/not/exist.conf")
    assert "/does/not/exist.conf" in str(exc.value) and exc.value.hint
