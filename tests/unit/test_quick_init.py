"""The warm ``isofeat init`` (quickinit.py): taken only when nothing init reads or writes changed.

Each case runs the real ``isofeat init`` twice (the second one is the quick path), changes one
input or output, and checks that the next open is a full run that sees the change. A change
the fingerprint missed would show as the quick path's note on that third open.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from isofeat import quickinit
from isofeat.envvars import state_dir
from tests.unit.test_init_faults import make_project

QUICK = quickinit.QUICK_NOTE.strip()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = dict(os.environ)
    environ.pop("ISOFEAT_NO_QUICK_INIT", None)
    environ.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"),
                   XDG_CONFIG_HOME=str(tmp_path / "config"))
    # What `isofeat image build` leaves: the base image's CA bundle, which the broker's trust
    # bundle extends once a secret is set (any PEM CA will do here).
    (tmp_path / "state" / "isofeat").mkdir(parents=True)
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt",
                    tmp_path / "state" / "isofeat" / "base-ca-bundle.pem")
    return environ


def init(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # `python -m isofeat` goes through the same entry point as the `isofeat` command.
    return subprocess.run([sys.executable, "-m", "isofeat", "init", *args], cwd=project,
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip


def warm(project: Path, env: dict[str, str]) -> None:
    """Two full runs, then a quick one that says so and changes nothing. The first open
    changes its own inputs (it shares the worktree with the sandbox group), so its stamp
    cannot match; the second's can."""
    for _ in range(2):
        full = init(project, env)
        assert full.returncode == 0 and QUICK not in full.stderr, full.stderr
    env_file = project / ".devcontainer" / ".env"
    before = env_file.read_bytes()
    second = init(project, env)
    assert second.returncode == 0 and QUICK in second.stderr, second.stderr
    assert env_file.read_bytes() == before


def renders(env: dict[str, str]) -> Path:
    (folder,) = (Path(env["XDG_STATE_HOME"]) / "isofeat" / "envs").iterdir()
    return folder / "proxy"


def config(env: dict[str, str]) -> Path:
    folder = Path(env["XDG_CONFIG_HOME"]) / "isofeat"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _edit_whitelist(p: Path, e: dict[str, str]) -> str:
    (p / ".devcontainer" / "whitelist.txt").write_text("other.example.org\n")  # same size
    return "other"


def _add_settings(p: Path, e: dict[str, str]) -> str:
    (p / ".devcontainer" / "isofeat.json").write_text('{"limits": {"memory": "3g"}}\n')
    return "ISOFEAT_MEM_LIMIT=3g"


def _global_whitelist(p: Path, e: dict[str, str]) -> str:
    (config(e) / "whitelist.txt").write_text("global.example.org\n")
    return "global"


def _env_var(p: Path, e: dict[str, str]) -> str:
    e["ISOFEAT_SOMETHING_NEW"] = "1"
    return ""


def _delete_env_file(p: Path, e: dict[str, str]) -> str:
    (p / ".devcontainer" / ".env").unlink()
    return "COMPOSE_PROJECT_NAME="


def _hand_edit_env_file(p: Path, e: dict[str, str]) -> str:
    path = p / ".devcontainer" / ".env"
    text = path.read_text()
    stat = path.stat()
    key = "ISOFEAT_PIDS_LIMIT="
    at = text.index(key) + len(key)
    digit = "1" if text[at] == "9" else "9"
    path.write_text(text[:at] + digit + text[at + 1:])  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back; ctime moves
    return "COMPOSE_PROJECT_NAME="


def _delete_render(p: Path, e: dict[str, str]) -> str:
    for f in renders(e).iterdir():
        f.unlink()
    return ""


def _chmod_render(p: Path, e: dict[str, str]) -> str:
    for f in renders(e).iterdir():
        f.chmod(0o644)
    return ""


def _set_secret(p: Path, e: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "isofeat", "secrets", "set", "GITHUB_TOKEN"],
                          input="ghp_test123", env={**e, "ISOFEAT_SECRETS_BACKEND": "file"},
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return "ISOFEAT_BROKER_SCALE=1"


def _git_link(p: Path, e: dict[str, str]) -> str:
    shutil.move(p / ".git", p / "real-git")
    (p / ".git").symlink_to(p / "real-git")
    return "REFUSED:symbolic link"


def _commondir_planted(p: Path, e: dict[str, str]) -> str:
    (p / ".git" / "commondir").write_text("/elsewhere\n")
    return "REFUSED:commondir"


def _old_stamp(p: Path, e: dict[str, str]) -> str:
    (stamp,) = (Path(e["XDG_STATE_HOME"]) / "isofeat" / "quick-init").iterdir()
    old = time.time() - quickinit.MAX_AGE_S - 60
    os.utime(stamp, (old, old))
    return ""


def _garbage_stamp(p: Path, e: dict[str, str]) -> str:
    (stamp,) = (Path(e["XDG_STATE_HOME"]) / "isofeat" / "quick-init").iterdir()
    stamp.write_text("not a stamp\n")
    return ""


def _no_share_run(p: Path, e: dict[str, str]) -> str:
    assert init(p, e, "--no-share").returncode == 0
    return ""


CHANGES: dict[str, Callable[[Path, dict[str, str]], str]] = {
    "project whitelist edited (same size)": _edit_whitelist,
    "isofeat.json added": _add_settings,
    "global whitelist added": _global_whitelist,
    "an ISOFEAT_ variable set": _env_var,
    ".env deleted": _delete_env_file,
    ".env edited, mtime restored": _hand_edit_env_file,
    "proxy renders deleted": _delete_render,
    "proxy renders made world-readable": _chmod_render,
    "a secret set": _set_secret,
    ".git replaced by a link": _git_link,
    "a commondir planted in .git": _commondir_planted,
    "stamp older than a day": _old_stamp,
    "stamp not a stamp": _garbage_stamp,
    "a --no-share run in between": _no_share_run,
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_any_change_to_what_init_reads_or_writes_means_a_full_run(
    change: str, tmp_path: Path, env: dict[str, str]
) -> None:
    project = make_project(tmp_path / "p")
    warm(project, env)
    expect = CHANGES[change](project, env)
    after = init(project, env)
    assert QUICK not in after.stderr, (change, after.stderr)
    if expect.startswith("REFUSED:"):
        assert after.returncode == 2 and expect[8:] in after.stderr, after.stderr
        return
    assert after.returncode == 0, after.stderr
    if expect:
        rendered = "".join(f.read_text() for f in renders(env).iterdir() if f.is_file())
        assert expect in (project / ".devcontainer" / ".env").read_text() + rendered, change
    for f in renders(env).iterdir():
        assert f.stat().st_mode & 0o077 == 0, f  # repaired to 0600
    # ... and the open after that is quick again: the repair left a whole stamp.
    again = init(project, env)
    assert again.returncode == 0 and QUICK in again.stderr, again.stderr


def test_a_worktree_whose_record_changes_is_opened_in_full(
    tmp_path: Path, env: dict[str, str]
) -> None:
    main = make_project(tmp_path / "main")
    tree = tmp_path / "tree"
    subprocess.run(["git", "-C", str(main), "worktree", "add", "-q", "-b", "task/t", str(tree)],
                   check=True)
    (tree / ".devcontainer").mkdir(exist_ok=True)
    warm(tree, env)
    # The main repository now lists that record for another folder: verify must refuse.
    record = main / ".git" / "worktrees" / "tree" / "gitdir"
    record.write_text(str(tmp_path / "elsewhere" / ".git") + "\n")
    after = init(tree, env)
    assert after.returncode == 2 and QUICK not in after.stderr, after.stderr


def test_the_stamp_is_the_users_alone_and_only_plain_init_reads_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    project = make_project(tmp_path / "p")
    warm(project, env)
    folder = Path(env["XDG_STATE_HOME"]) / "isofeat" / "quick-init"
    (stamp,) = folder.iterdir()
    assert folder.stat().st_mode & 0o777 == 0o700 and stamp.stat().st_mode & 0o777 == 0o600
    # --json (what scripts parse) always runs in full.
    full = init(project, env, "--json")
    assert json.loads(full.stdout)["changed"] is False and QUICK not in full.stderr
    # A stamp another user could write is not trusted.
    stamp.chmod(0o620)
    assert QUICK not in init(project, env).stderr
    # ISOFEAT_NO_QUICK_INIT=1 turns the quick path off.
    assert QUICK in init(project, env).stderr
    assert QUICK not in init(project, {**env, "ISOFEAT_NO_QUICK_INIT": "1"}).stderr


def test_quickinit_finds_the_state_folder_where_envvars_puts_it(tmp_path: Path) -> None:
    """quickinit works the folder out without pathlib; the rule must stay envvars'."""
    for environ in ({"XDG_STATE_HOME": str(tmp_path / "x")}, {"HOME": str(tmp_path / "h")},
                    {"XDG_STATE_HOME": "", "HOME": str(tmp_path / "h2")}):
        assert quickinit.state_root(environ) == str(state_dir(environ))
