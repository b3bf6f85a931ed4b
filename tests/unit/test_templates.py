import jinja2
import pytest

from shifter import templates


def test_strict_undefined():
    with pytest.raises(jinja2.UndefinedError):
        templates.render("hosts")


def test_hosts_and_write_reports_change(tmp_path):
    nodes = [{"name": "n1", "addr": "127.0.1.1"}, {"name": "n2", "addr": "127.0.1.2"}]
    path = tmp_path / "hosts"
    assert templates.write("hosts", str(path), nodes=nodes) is True
    assert "127.0.1.2\tn2" in path.read_text()
    assert templates.write("hosts", str(path), nodes=nodes) is False
    assert templates.write("hosts", str(path), nodes=nodes[:1]) is True
