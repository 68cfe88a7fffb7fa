"""The tinyproxy config compiler (the real proxy is exercised in tests/docker)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from isofeat.cli import main
from isofeat.proxy_render import ere_escape, parse_upstream, rules_for
from isofeat.whitelist import parse_entry


def render(tmp_path: Path, whitelist: str, *extra: str) -> tuple[str, str]:
    wl = tmp_path / "w.txt"
    wl.write_text(whitelist)
    out = tmp_path / "out"
    assert (
        main(["proxy", "render", "--defaults", "none", "-w", str(wl), "--out", str(out), *extra])
        == 0
    )
    return (out / "tinyproxy.conf").read_text(), (out / "filter").read_text()


def rules(filter_text: str) -> list[str]:
    return [line for line in filter_text.splitlines() if line and not line.startswith("#")]


def test_conf_denies_by_default_with_lowercase_ere_and_url_filtering(tmp_path: Path) -> None:
    conf, _ = render(tmp_path, "github.com\n")
    lines = conf.splitlines()
    for needed in (
        "FilterDefaultDeny Yes",
        "FilterType ere",
        "FilterURLs On",
        'Filter "/etc/isofeat/proxy/filter"',
        "ConnectPort 443",
        "Port 8888",
    ):
        assert needed in lines
    assert "FilterType ERE" not in conf  # read as BRE by 1.11.1


def test_every_rule_is_anchored_and_escaped(tmp_path: Path) -> None:
    _, filt = render(tmp_path, "github.com\n*.example.com\nx.test:8443\n10.0.0.5\n[2001:db8::1]\n")
    found = rules(filt)
    assert found == [
        r"^http://github\.com/([^:]|:[^0-9])*$",
        r"^github\.com:443$",
        r"^http://([a-z0-9_-]+\.)+example\.com/([^:]|:[^0-9])*$",
        r"^([a-z0-9_-]+\.)+example\.com:443$",
        r"^http://x\.test:8443/([^:]|:[^0-9])*$",
        r"^x\.test:8443$",
        r"^http://10\.0\.0\.5/([^:]|:[^0-9])*$",
        r"^10\.0\.0\.5:443$",
        r"^http://\[2001:db8::1\]/([^:]|:[^0-9])*$",
        r"^\[2001:db8::1\]:443$",
    ]
    for rule in found:
        assert rule.startswith("^")
        assert " " not in rule and "#" not in rule  # tinyproxy cuts lines there


def test_connect_ports_are_the_union_of_entries(tmp_path: Path) -> None:
    conf, _ = render(tmp_path, "a.test\nb.test:8443\nc.test:8443\n")
    assert [line for line in conf.splitlines() if line.startswith("ConnectPort")] == [
        "ConnectPort 443",
        "ConnectPort 8443",
    ]


def test_empty_whitelist_renders_a_deny_all_rule(tmp_path: Path) -> None:
    _, filt = render(tmp_path, "# nothing\n")
    assert rules(filt) == [r"^isofeat-deny-all\.invalid:0$"]


def test_rules_match_like_the_proxy_for_tricky_targets() -> None:
    # Python's re agrees with POSIX ERE on these simple patterns (anchors, classes, escapes).
    http, connect = (re.compile(r, re.IGNORECASE) for r in rules_for(parse_entry("github.com")))
    assert http.search("http://github.com/x")
    assert http.search("HTTP://GITHUB.COM/")
    assert http.search("http://github.com/a:b?c=d:e")
    for target in [
        "http://github.com@evil.test/",
        "http://github.com?@evil.test/",
        "http://github.com:80/",
        "http://github.com.evil.test/",
        "http://github.com",
        "http://evil.test/github.com/",
        "http://github.com:8080/",
        "http://github.com#@evil.test/",
        "http://xgithub.com/",
    ]:
        assert not http.search(target), target
    assert connect.search("github.com:443")
    for target in [
        "github.com:4430",
        "github.com:443@evil.test:443",
        "evil.test:443",
        "github.com:443/x",
        "github.com",
        "github.com.:443",
        "agithub.com:443",
    ]:
        assert not connect.search(target), target


def test_ere_escape_covers_every_special_character() -> None:
    assert ere_escape("a.b[c]d(e)f*g+h?i{j}k|l^m$n\\o") == (
        "a\\.b\\[c\\]d\\(e\\)f\\*g\\+h\\?i\\{j\\}k\\|l\\^m\\$n\\\\o"
    )


def test_upstream_and_client_acl_are_rendered(tmp_path: Path) -> None:
    conf, _ = render(
        tmp_path,
        "a.test\n",
        "--upstream",
        "socks5://user:pw@up.test:1080",
        "--no-upstream",
        "internal.test",
        "--allow-client",
        "172.30.0.7",
        "10.1.0.0/16",
    )
    lines = conf.splitlines()
    assert "Upstream socks5 user:pw@up.test:1080" in lines
    assert 'Upstream none "internal.test"' in lines
    assert "Allow 172.30.0.7/32" in lines and "Allow 10.1.0.0/16" in lines


@pytest.mark.parametrize(
    "url",
    [
        "ftp://up.test:21",
        "socks5://up.test",
        "http://up.test:3128/path",
        "up.test:3128",
        "http://a b@up.test:1",
        'http://x"y@up.test:1',
        "http://:3128",
    ],
)
def test_bad_upstream_is_rejected(url: str) -> None:
    with pytest.raises(Exception, match="upstream proxy"):
        parse_upstream(url)


def test_bad_render_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wl = tmp_path / "w.txt"
    wl.write_text("github.com\n.*\n")
    out = tmp_path / "out"
    assert main(["proxy", "render", "--defaults", "none", "-w", str(wl), "--out", str(out)]) == 2
    assert f"{wl}:2:" in capsys.readouterr().err
    assert not out.exists()


def test_rerender_replaces_files_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    render(tmp_path, "a.test\n")
    _, filt = render(tmp_path, "b.test\n", "--json")
    assert "a\\.test" not in filt and "b\\.test" in filt
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rules"] == 2
