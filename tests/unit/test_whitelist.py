"""The whitelist language through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isofeat.cli import main
from isofeat.whitelist import Layer, Source, merge, parse_entry, parse_text


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------- lint: bad lines


BAD_LINES = [
    ("*", "bare wildcard"),
    (".*", "bare wildcard"),
    ("*.*", "bare wildcard"),
    ("^github\\.com$", "regular expressions"),
    ("git(hub)?.com", "regular expressions"),
    ("github.com|evil.test", "regular expressions"),
    ("https://github.com/org/repo", "URLs are not accepted"),
    ("http://github.com", "URLs are not accepted"),
    ("github.com/org", "a path is not accepted"),
    ("github..com", "empty label"),
    (".github.com", "empty label"),
    ("github.com:0", "bad port"),
    ("github.com:65536", "bad port"),
    ("github.com:08443", "bad port"),
    ("github.com:http", "bad port"),
    ("github.com:", "bad port"),
    ("git*.com", "only as the whole first label"),
    ("a.*.example.com", "only as the whole first label"),
    ("*.com", "whole top-level domain"),
    ("10.0.0.0/8", "CIDR"),
    ("user@github.com", "user info"),
    ("github.com evil.test", "more than one entry"),
    ("127.1", "last label is numeric"),
    ("0x7f.1", "last label is numeric"),
    ("010.0.0.1", "last label is numeric"),
    ("-github.com", "not a host name label"),
    ("git_hub-.com", "not a host name label"),
    ("exa$mple.com", "regular expressions"),
    ("[github.com]", "not an IPv6 address"),
    ("[::1", "unclosed"),
    ("1:2:3", "not an IPv6 address"),
    ("*.10.0.0.1", "wildcard cannot precede an IP"),
    ("!", "'!' with nothing"),
    ("a" * 64 + ".com", "not a host name label"),
    (".".join(["abcdefghij"] * 25) + ".com", "at most 253"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_lint_rejects_bad_line_with_file_line_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, reason: str
) -> None:
    path = write(tmp_path, "whitelist.txt", f"# comment\ngithub.com\n{line}  # note\n")
    assert main(["whitelist", "lint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: " in err
    assert reason in err
    assert "fix: " in err


def test_lint_reports_every_bad_line_not_just_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "w.txt", "*\nok.example.com\n.*\nhttp://x.test/\n")
    assert main(["whitelist", "lint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1:" in err and f"{path}:3:" in err and f"{path}:4:" in err
    assert f"{path}:2:" not in err


def test_lint_accepts_the_whole_language(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w.txt",
        "\n".join(
            [
                "# comment",
                "",
                "example.com",
                "*.example.com",
                "example.com:8443",
                "EXAMPLE.org.",
                "bücher.de",
                "10.0.0.5",
                "10.0.0.5:8080",
                "2001:db8::1",
                "[2001:db8::2]:443",
                "_dmarc.example.com",
                "!statsig.com",
                "localhost",
            ]
        ),
    )
    assert main(["whitelist", "lint", str(path)]) == 0


def test_missing_file_is_exit_2_with_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.txt"
    assert main(["whitelist", "lint", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


# --------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GitHub.COM", "github.com"),
        ("github.com.", "github.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("*.Example.com", "*.example.com"),
        ("2001:DB8:0:0::1", "[2001:db8::1]"),
        ("[2001:db8::1]:8443", "[2001:db8::1]:8443"),
        ("example.com:8443", "example.com:8443"),
    ],
)
def test_names_are_normalised(text: str, expected: str) -> None:
    assert str(parse_entry(text)) == expected


# --------------------------------------------------------------------- merging


def test_layers_merge_in_order_and_removal_drops_inherited_entries() -> None:
    policy = merge(
        [
            Layer("defaults", "statsig.com\ngithub.com\nexample.com:8443\nexample.com\n"),
            Layer("global", "!statsig.com\n!example.com:8443\n"),
            Layer("project", "pypi.org\n"),
        ]
    )
    assert [str(e) for e in policy.entries] == ["github.com", "example.com", "pypi.org"]
    removed = {str(e): str(r.source) for e, r in policy.removed}
    assert removed == {"statsig.com": "global:1", "example.com:8443": "global:2"}


def test_removal_without_port_drops_every_port_of_that_host() -> None:
    policy = merge([Layer("a", "x.test\nx.test:8443\n*.x.test\n"), Layer("b", "!x.test\n")])
    assert [str(e) for e in policy.entries] == ["*.x.test"]


def test_a_later_layer_can_add_back_what_an_earlier_one_removed() -> None:
    policy = merge([Layer("a", "x.test\n"), Layer("b", "!x.test\n"), Layer("c", "x.test\n")])
    assert [str(e) for e in policy.entries] == ["x.test"]
    assert policy.removed == ()


def test_one_bad_line_in_any_layer_stops_the_merge() -> None:
    with pytest.raises(Exception, match=r"project:2: .*bare wildcard"):
        merge([Layer("defaults", "github.com\n"), Layer("project", "pypi.org\n*\n")])


def test_parse_text_keeps_sources() -> None:
    items, problems = parse_text("\n\n  github.com # x\n", "f")
    assert not problems
    assert items[0].source == Source("f", 3)  # type: ignore[union-attr]


# --------------------------------------------------------------------- check


CHECKS = [
    # (target, flag, expected exit)
    ("github.com", "--connect", 0),
    ("GITHUB.com:443", "--connect", 0),
    ("github.com", "--http", 0),
    ("github.com:8080", "--http", 1),
    ("github.com:22", "--connect", 1),
    ("github.com.attacker.test", "--connect", 1),
    ("attacker-github.com", "--connect", 1),
    ("notgithub.com", "--connect", 1),
    ("githubXcom", "--connect", 1),
    ("github.com.", "--connect", 1),
    ("api.example.com", "--connect", 0),
    ("a.b.example.com", "--connect", 0),
    ("example.com", "--connect", 1),  # only *.example.com listed
    ("registry.test:5000", "--connect", 0),
    ("registry.test:5000", "--http", 0),
    ("registry.test", "--connect", 1),  # a port-qualified entry allows only its port
    ("10.0.0.5:443", "--connect", 0),
    ("10.0.0.6:443", "--connect", 1),
    ("[2001:db8::1]:443", "--connect", 0),
    ("2001:db8::1", "--connect", 0),
    ("[2001:db8::2]:443", "--connect", 1),
    ("[::1]:443", "--connect", 1),
    ("127.0.0.1", "--http", 1),
    ("statsig.com", "--connect", 1),
    ("bücher.de", "--connect", 0),
]


@pytest.mark.parametrize(("target", "flag", "expected"), CHECKS)
def test_check_answers_like_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, flag: str, expected: int
) -> None:
    wl = write(
        tmp_path,
        "w.txt",
        "github.com\n*.example.com\nregistry.test:5000\n10.0.0.5\n2001:db8::1\nstatsig.com\n"
        "bücher.de\n!statsig.com\n",
    )
    code = main(["whitelist", "check", target, flag, "--defaults", "none", "-w", str(wl)])
    assert code == expected
    out = capsys.readouterr().out
    assert out.startswith("ALLOW" if expected == 0 else "DENY")


def test_check_names_the_deciding_rule_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wl = write(tmp_path, "w.txt", "# c\n*.example.com\n")
    assert (
        main(
            ["whitelist", "check", "api.example.com", "-w", str(wl), "--defaults", "none", "--json"]
        )
        == 0
    )
    decision = json.loads(capsys.readouterr().out)
    assert decision["rule"] == "*.example.com"
    assert decision["source"] == f"{wl}:2"


def test_check_explains_a_port_denial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wl = write(tmp_path, "w.txt", "github.com\n")
    assert main(["whitelist", "check", "github.com:22", "-w", str(wl), "--defaults", "none"]) == 1
    assert "port 443 only, not 22" in capsys.readouterr().out


def test_check_explains_a_removal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wl = write(tmp_path, "w.txt", "!statsig.com\n")
    assert main(["whitelist", "check", "statsig.com", "-w", str(wl), "--no-global"]) == 1
    assert "removed by !statsig.com" in capsys.readouterr().out


def test_builtin_defaults_and_global_file_are_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert main(["whitelist", "check", "api.anthropic.com"]) == 0
    glob = tmp_path / "cfg" / "isofeat" / "whitelist.txt"
    glob.parent.mkdir(parents=True)
    glob.write_text("!api.anthropic.com\ncorp.example.net\n")
    assert main(["whitelist", "check", "api.anthropic.com"]) == 1
    assert main(["whitelist", "check", "corp.example.net"]) == 0
    assert main(["whitelist", "check", "corp.example.net", "--no-global"]) == 1
    capsys.readouterr()


def test_bad_target_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["whitelist", "check", "github.com:99999", "--defaults", "sandbox", "--no-global"])
        == 2
    )
    assert "bad port" in capsys.readouterr().err


def test_builtin_lists_are_clean_and_commented() -> None:
    from isofeat.whitelist import builtin_text

    for name in ("sandbox", "dind"):
        text = builtin_text(name)
        items, problems = parse_text(text, name)
        assert not problems
        assert len(items) >= 10
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert "#" in line, f"{name}: entry without a comment saying why: {line!r}"


def test_dind_defaults_hold_registries_not_agent_endpoints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(["whitelist", "check", "registry-1.docker.io", "--defaults", "dind", "--no-global"])
        == 0
    )
    assert (
        main(["whitelist", "check", "api.anthropic.com", "--defaults", "dind", "--no-global"]) == 1
    )
    capsys.readouterr()


def test_show_lists_entries_with_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wl = write(tmp_path, "w.txt", "a.test\n!b.test\n")
    base = write(tmp_path, "base.txt", "b.test\n")
    assert (
        main(["whitelist", "show", "--defaults", "none", "-w", str(base), str(wl), "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["entries"] == [
        {"entry": "a.test", "http_port": 80, "connect_port": 443, "source": f"{wl}:1"}
    ]
    assert data["removed"][0]["entry"] == "b.test"
