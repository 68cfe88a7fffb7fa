"""Malformed arguments to every verb: exit 2, a ``fix:`` line, nothing echoed raw, nothing
written (SECURITY-CASES 17).

Each case drives the real entry point, :func:`isofeat.cli.main`, from a scratch folder that
holds a FIFO, a folder and a file, and compares that folder (and HOME) before and after.
``{fifo}``, ``{dir}``, ``{file}`` and ``{missing}`` in an argument name those paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from isofeat.cli import main

ESC = "\x1b[31mred\x1b[0m"
CSI_C1 = "x\x9b2J"  # the 8-bit CSI: some terminals act on it, like ESC [
NEWLINE = "a\nfix: rm -rf ~"  # a forged fix line

CASES: list[tuple[str, list[str]]] = [
    # whitelist check: what a request could never name (issue 11)
    ("check-empty", ["whitelist", "check", ""]),
    ("check-colon", ["whitelist", "check", ":"]),
    ("check-space", ["whitelist", "check", "a b"]),
    ("check-unclosed-ipv6", ["whitelist", "check", "[::1"]),
    ("check-wildcard", ["whitelist", "check", "*.github.com"]),
    ("check-path", ["whitelist", "check", "github.com/../x"]),
    ("check-url", ["whitelist", "check", "http://github.com/x"]),
    ("check-userinfo", ["whitelist", "check", "user@github.com"]),
    ("check-empty-port", ["whitelist", "check", "github.com:"]),
    ("check-port-0", ["whitelist", "check", "github.com:0"]),
    ("check-port-huge", ["whitelist", "check", "github.com:99999999999999999999"]),
    ("check-no-host", ["whitelist", "check", ":443"]),
    ("check-regex", ["whitelist", "check", "git.ub\\.com"]),
    ("check-double-dot", ["whitelist", "check", "a..b"]),
    ("check-ansi", ["whitelist", "check", ESC]),
    ("check-c1", ["whitelist", "check", CSI_C1]),
    ("check-newline", ["whitelist", "check", NEWLINE]),
    ("check-nul", ["whitelist", "check", "a\x00b"]),
    ("check-huge", ["whitelist", "check", "a" * 100_000]),
    ("check-option-like", ["whitelist", "check", "--force"]),
    ("check-whitelist-fifo", ["whitelist", "check", "x", "-w", "{fifo}"]),
    ("check-whitelist-dir", ["whitelist", "check", "x", "-w", "{dir}"]),
    ("check-whitelist-empty", ["whitelist", "check", "x", "-w", ""]),
    ("check-whitelist-missing", ["whitelist", "check", "x", "-w", "{missing}"]),
    ("check-defaults-bad", ["whitelist", "check", "x", "--defaults", ESC]),
    # whitelist lint/show/suggest
    ("lint-empty", ["whitelist", "lint", ""]),
    ("lint-fifo", ["whitelist", "lint", "{fifo}"]),
    ("lint-dir", ["whitelist", "lint", "{dir}"]),
    ("lint-missing-ansi", ["whitelist", "lint", ESC]),
    ("lint-nul", ["whitelist", "lint", "a\x00"]),
    ("show-dir", ["whitelist", "show", "-w", "{dir}"]),
    ("suggest-empty", ["whitelist", "suggest", ""]),
    ("suggest-dir", ["whitelist", "suggest", "{dir}"]),
    ("suggest-container-empty", ["whitelist", "suggest", "--container", ""]),
    ("unknown-verb-ansi", ["whitelist", ESC]),
    ("unknown-option-ansi", ["whitelist", "check", "x", "--" + ESC]),
    # proxy render/reload, egress log
    ("render-out-empty", ["proxy", "render", "--out", ""]),
    ("render-out-fifo", ["proxy", "render", "--out", "{fifo}"]),
    ("render-out-file", ["proxy", "render", "--out", "{file}"]),
    ("render-out-nul", ["proxy", "render", "--out", "a\x00"]),
    ("render-upstream-empty", ["proxy", "render", "--out", "{missing}", "--upstream", ""]),
    ("render-upstream-port-0",
     ["proxy", "render", "--out", "{missing}", "--upstream", "socks5://h:0"]),
    ("render-upstream-ansi", ["proxy", "render", "--out", "{missing}", "--upstream", ESC]),
    ("render-upstream-path",
     ["proxy", "render", "--out", "{missing}", "--upstream", "http://h:1/x"]),
    ("render-max-clients", ["proxy", "render", "--out", "{missing}", "--max-clients", "-1"]),
    ("render-max-clients-text",
     ["proxy", "render", "--out", "{missing}", "--max-clients", "many"]),
    ("render-allow-client", ["proxy", "render", "--out", "{missing}", "--allow-client", ""]),
    ("render-no-upstream-wildcard",
     ["proxy", "render", "--out", "{missing}", "--upstream", "socks5://h:1",
      "--no-upstream", "*"]),
    ("render-owner-root", ["proxy", "render", "--out", "{missing}", "--owner", "0"]),
    ("render-owner-text", ["proxy", "render", "--out", "{missing}", "--owner", "tinyproxy"]),
    ("render-owner-negative", ["proxy", "render", "--out", "{missing}", "--owner", "-1:5"]),
    ("reload-nothing", ["proxy", "reload"]),
    ("reload-container-empty", ["proxy", "reload", "--container", ""]),
    ("reload-project-empty", ["proxy", "reload", "--project", ""]),
    ("reload-wait-nan", ["proxy", "reload", "--container", "x", "--wait", "nan"]),
    ("reload-wait-negative", ["proxy", "reload", "--container", "x", "--wait", "-5"]),
    ("egress-log-empty", ["egress", "log", ""]),
    ("egress-log-dir", ["egress", "log", "{dir}"]),
    ("egress-log-missing", ["egress", "log", "{missing}"]),
    ("egress-log-nul", ["egress", "log", "a\x00"]),
    ("egress-container-empty", ["egress", "log", "--container", ""]),
    # init, doctor
    ("init-empty", ["init", ""]),
    ("init-missing", ["init", "{missing}"]),
    ("init-fifo", ["init", "{fifo}"]),
    ("init-file", ["init", "{file}"]),
    ("init-ansi", ["init", ESC]),
    ("init-newline", ["init", NEWLINE]),
    ("init-nul", ["init", "a\x00b"]),
    ("init-no-devcontainer", ["init", "{dir}"]),
    ("init-option-like", ["init", "--force"]),
    ("doctor-extra", ["doctor", "extra"]),
    # task (validation only: tasks.py is being rewritten elsewhere)
    ("task-new-empty", ["task", "new", ""]),
    ("task-new-option-like", ["task", "new", "--", "--force"]),
    ("task-new-dotdot", ["task", "new", "../x"]),
    ("task-new-absolute", ["task", "new", "/tmp/x"]),
    ("task-new-ansi", ["task", "new", ESC]),
    ("task-new-newline", ["task", "new", NEWLINE]),
    ("task-rm-space", ["task", "rm", "a b"]),
    ("task-merge-empty", ["task", "merge", ""]),
    ("task-list-extra", ["task", "list", "extra"]),
    # run, notify, image, scaffold
    ("run-empty", ["run", ""]),
    ("run-ansi", ["run", ESC]),
    ("notify-send-bad-urgency", ["notify", "send", "--urgency", ESC, "x"]),
    ("notify-send-no-urgency", ["notify", "send", "x"]),
    ("notify-watch-root-empty", ["notify", "watch", "--root", "", "--once"]),
    ("notify-watch-root-fifo", ["notify", "watch", "--root", "{fifo}", "--once"]),
    ("notify-watch-root-nul", ["notify", "watch", "--root", "a\x00", "--once"]),
    ("image-build-bad-target", ["image", "build", ESC]),
    ("image-build-extra-ca-empty", ["image", "build", "--extra-ca", ""]),
    ("image-build-extra-ca-fifo", ["image", "build", "--extra-ca", "{fifo}"]),
    ("image-build-extra-ca-dir", ["image", "build", "--extra-ca", "{dir}"]),
    ("image-build-extra-ca-missing", ["image", "build", "--extra-ca", "{missing}"]),
    ("scaffold-empty", ["scaffold", ""]),
    ("scaffold-option-like", ["scaffold", "--no-input", "--", "--force"]),
    ("scaffold-missing", ["scaffold", "{missing}", "--no-input"]),
    ("scaffold-fifo", ["scaffold", "{fifo}", "--no-input"]),
    ("scaffold-nul", ["scaffold", "a\x00b", "--no-input"]),
    ("scaffold-unknown-variable", ["scaffold", "--no-input", f"{ESC}=1"]),
    ("scaffold-not-key-value", ["scaffold", "{dir}", "--no-input", "novalue"]),
    ("scaffold-template-empty", ["scaffold", "--no-input", "--template", ""]),
    ("scaffold-jinja", ["scaffold", "--no-input", "project_name={{ 7*7 }}"]),
    ("scaffold-no-terminal", ["scaffold", "{dir}"]),
    ("scaffold-unknown-option", ["scaffold", "--no-input", "--bogus"]),
    ("top-unknown-verb", [ESC]),
    ("top-nothing", []),
]


@pytest.fixture
def scratch(tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    os.mkfifo(work / "fifo")
    (work / "dir").mkdir()
    (work / "file").write_text("github.com\n")
    monkeypatch.chdir(work)
    # Stdin is no terminal and holds nothing: a verb that would ask must fail, not hang.
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115 (closed by pytest)
    return tmp_path


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and mtime: any change shows."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def _expand(argv: list[str], work: Path) -> list[str]:
    names = {"{fifo}": "fifo", "{dir}": "dir", "{file}": "file", "{missing}": "missing"}
    return [str(work / names[a]) if a in names else a for a in argv]


def _no_raw_controls(text: str) -> bool:
    return all(ch == "\n" or ch.isprintable() for ch in text)


@pytest.mark.parametrize(("argv"), [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_exit_2_with_a_fix_and_changes_nothing(
    scratch: Path, argv: list[str], capsys: pytest.CaptureFixture[str], security_report: Any,
) -> None:
    before = _snapshot(scratch)
    code = main(_expand(argv, scratch / "work"))
    out, err = capsys.readouterr()
    security_report.bad_input(
        "17", "isofeat " + " ".join(a[:40] for a in argv), expected="exit 2, a fix, no raw "
        "control bytes, nothing changed", observed=f"exit {code}", ok=code == 2 and
        "\n  fix: " in err and _no_raw_controls(err + out) and _snapshot(scratch) == before)
    assert code == 2, err
    assert "\n  fix: " in err, err
    assert "Traceback" not in err
    assert _no_raw_controls(err), repr(err)
    assert _no_raw_controls(out), repr(out)
    assert _snapshot(scratch) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["whitelist", "check", ESC],
        ["whitelist", "lint", ESC],
        ["whitelist", ESC],
        ["whitelist", "check", "x", "--" + ESC],
        ["init", NEWLINE],
        ["proxy", "render", "--out", "o", "--upstream", "\x07" + CSI_C1],
        ["scaffold", "--no-input", f"{ESC}=1"],
    ],
    ids=["check", "lint", "verb", "option", "init", "upstream", "scaffold"],
)
def test_the_console_script_writes_no_control_bytes(
    tmp_path: Path, isolated_home: Path, argv: list[str]
) -> None:
    """The bytes a terminal would get, from the installed console script."""
    script = Path(sys.executable).with_name("isofeat")
    proc = subprocess.run(
        [str(script), *argv], cwd=tmp_path, capture_output=True, stdin=subprocess.DEVNULL,
        timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert b"fix: " in proc.stderr
    raw = proc.stdout + proc.stderr
    assert not [b for b in raw if (b < 0x20 and b != 0x0A) or b == 0x7F], raw
    assert b"\xc2\x9b" not in raw  # the C1 CSI, UTF-8 encoded
    assert list(tmp_path.iterdir()) == [isolated_home]


def test_lint_and_show_escape_the_file_name_they_print(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = scratch / "work" / f"wl{ESC}.txt"
    bad.write_text("*\n")
    assert main(["whitelist", "lint", str(bad)]) == 2
    good = scratch / "work" / f"ok{ESC}.txt"
    good.write_text("example.com\n")
    assert main(["whitelist", "show", "--defaults", "none", "-w", str(good)]) == 0
    out, err = capsys.readouterr()
    assert "fix:" in err
    assert _no_raw_controls(out + err), repr(out + err)
    assert "\\x1b[31m" in err and "\\x1b[31m" in out


class _Proxy:
    """Stands in for the docker SDK's container: only the reload's error path is tested here
    (tests/docker/test_proxy_egress.py reloads a real proxy)."""

    name = "isofeat-x-proxy-1"
    status = "running"

    def exec_run(self, argv: list[str]) -> tuple[int, bytes]:
        return 1, b"isofeat-proxy: refusing to start: filter is empty\n\x1b[31mred"

    def reload(self) -> None:
        pass


def test_a_refused_reload_is_one_error_with_the_proxys_words_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from isofeat import proxy_reload

    monkeypatch.setattr(proxy_reload, "find_container", lambda *a: _Proxy())
    assert main(["proxy", "reload", "--container", "x", "--wait", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("isofeat: error: proxy isofeat-x-proxy-1 refused the new config and "
                          "keeps its previous rules:\n  isofeat-proxy: refusing to start")
    assert "\x1b" not in err and "\\x1b[31mred" in err
