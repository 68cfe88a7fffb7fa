"""The shell helpers the Features share: one source (features/lib/), a committed copy in each
Feature's vendor/ folder (the spec packages each Feature on its own), and a check for drift.

- every copy equals its source (`scripts/sync-feature-lib --check`, the script itself);
- the check names a drifted, missing or stale copy and the script repairs it;
- no install.sh defines a shared helper again (a local copy would drift from the shared one);
- the helpers themselves, run by bash: build_network_env, write_if_changed, apt_get_install's
  guard, and the messages that name the Feature.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "sync-feature-lib"
LIB = REPO / "features" / "lib" / "common.sh"
SRC = REPO / "features" / "src"
FEATURE_IDS = ("agent-team", "ai-agents", "egress-proxy", "isofeat", "sandbox-user")


def sync(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repo / "scripts" / "sync-feature-lib"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def shared_functions() -> set[str]:
    return set(re.findall(r"^([a-z_]+)\(\) \{", LIB.read_text(), re.MULTILINE))


def run_helpers(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``bash -c`` with strict mode and the shared helpers sourced as a Feature would."""
    prelude = f'set -euo pipefail\nFEATURE=test-feature\n. "{LIB}"\n'
    return subprocess.run(
        ["bash", "-c", prelude + script],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
    )


# --- the copies ------------------------------------------------------------------------------


def test_every_feature_carries_the_current_copy() -> None:
    result = sync(REPO, "--check")
    assert result.returncode == 0, result.stderr
    for feature in FEATURE_IDS:
        assert (SRC / feature / "vendor" / "common.sh").read_bytes() == LIB.read_bytes()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the script and of features/, to drift without touching the repository."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "scripts" / "sync-feature-lib")
    shutil.copytree(REPO / "features", tmp_path / "features",
                    ignore=shutil.ignore_patterns("wheels", "__pycache__"))
    return tmp_path


def test_check_names_each_drifted_copy_and_the_script_repairs_it(checkout: Path) -> None:
    src = checkout / "features" / "src"
    edited = src / "ai-agents" / "vendor" / "common.sh"
    edited.write_text(edited.read_text().replace("--error-on=any", ""))
    (src / "isofeat" / "vendor" / "common.sh").unlink()
    (src / "egress-proxy" / "vendor" / "old.sh").write_text("# no longer in features/lib\n")

    result = sync(checkout, "--check")
    assert result.returncode == 1
    assert "differs: features/src/ai-agents/vendor/common.sh" in result.stderr
    assert "missing: features/src/isofeat/vendor/common.sh" in result.stderr
    assert "stale (no source in features/lib): features/src/egress-proxy/vendor/old.sh" in (
        result.stderr
    )
    assert "run scripts/sync-feature-lib" in result.stderr
    assert "sandbox-user" not in result.stderr

    assert sync(checkout).returncode == 0
    assert sync(checkout, "--check").returncode == 0
    assert edited.read_bytes() == LIB.read_bytes()
    assert not (src / "egress-proxy" / "vendor" / "old.sh").exists()
    again = sync(checkout)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_a_new_shared_file_is_copied_into_every_feature(checkout: Path) -> None:
    (checkout / "features" / "lib" / "extra.sh").write_text("# shellcheck shell=bash\n")
    assert sync(checkout, "--check").returncode == 1
    assert sync(checkout).returncode == 0
    for feature in FEATURE_IDS:
        assert (checkout / "features" / "src" / feature / "vendor" / "extra.sh").is_file()


def test_bad_arguments_print_the_usage() -> None:
    result = sync(REPO, "--fix")
    assert result.returncode == 2
    assert "Usage: scripts/sync-feature-lib [--check]" in result.stderr


@pytest.mark.parametrize("feature", FEATURE_IDS)
def test_install_sh_does_not_define_a_shared_helper_again(feature: str) -> None:
    text = (SRC / feature / "install.sh").read_text()
    defined = set(re.findall(r"^\s*([a-z_]+)\(\) \{", text, re.MULTILINE))
    assert not defined & shared_functions(), "use the one in features/lib/common.sh"


# --- the helpers -----------------------------------------------------------------------------


def test_messages_name_the_feature(tmp_path: Path) -> None:
    result = run_helpers('log "hello"; die "broken, fix it"', tmp_path)
    assert result.returncode == 1
    assert result.stdout == "test-feature: hello\n"
    assert result.stderr == "ERROR (test-feature): broken, fix it\n"


def test_sourcing_without_feature_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; . "{LIB}"; echo reached'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "reached" not in result.stdout
    assert "sets FEATURE" in result.stderr


def test_unsupported_distribution_is_named(tmp_path: Path) -> None:
    # check_distribution reads /etc/os-release; run it on a copy that points elsewhere.
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=alpine\nVERSION_ID=3.20\n')
    lib = tmp_path / "common.sh"
    lib.write_text(LIB.read_text().replace("/etc/os-release", str(os_release)))
    result = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; FEATURE=x; . "{lib}"; check_distribution "apt"'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR (x): unsupported distribution 'alpine'")
    assert "needs Debian or Ubuntu (apt)" in result.stderr


def test_build_network_env_drops_a_proxy_that_does_not_resolve(tmp_path: Path) -> None:
    script = 'build_network_env; echo "HTTP=${HTTP_PROXY:-unset} NO=${NO_PROXY:-unset}"'
    result = run_helpers(
        script,
        tmp_path,
        HTTP_PROXY="http://user:secret@proxy.isofeat-test.invalid:8888",
        NO_PROXY="localhost",
    )
    assert result.returncode == 0, result.stderr
    assert "HTTP=unset NO=localhost" in result.stdout
    assert "not using HTTP_PROXY while building: proxy.isofeat-test.invalid" in result.stdout
    assert "secret" not in result.stdout + result.stderr, "a proxy password is never logged"


def test_build_network_env_keeps_a_proxy_that_resolves(tmp_path: Path) -> None:
    result = run_helpers(
        'build_network_env; echo "HTTPS=${HTTPS_PROXY:-unset}"',
        tmp_path,
        HTTPS_PROXY="http://localhost:3128",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "HTTPS=http://localhost:3128"


def test_write_if_changed_writes_once_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "thing.conf"
    script = f'write_if_changed "{target}" "a=1" 0640; write_if_changed "{target}" "a=1" 0640'
    result = run_helpers(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote") == 1
    assert target.read_text() == "a=1\n"
    assert target.stat().st_mode & 0o777 == 0o640
    target.chmod(0o666)
    result = run_helpers(f'write_if_changed "{target}" "a=1" 0640', tmp_path)
    assert "wrote" not in result.stdout
    assert target.stat().st_mode & 0o777 == 0o640, "the mode is set even when the content is"
    assert not list(target.parent.glob("*.isofeat-tmp"))


@pytest.fixture
def fake_apt(tmp_path: Path) -> Path:
    """A PATH of the real dpkg-query and the tools the helpers use, and an apt-get that only
    records how it was called (in apt-get.log)."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("needs dpkg (Debian or Ubuntu)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dpkg-query", "bash", "cat", "sed", "head", "getent"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!{bin_dir / "bash"}\necho "$*" >>"{tmp_path / "apt-get.log"}"\n')
    apt.chmod(0o755)
    return bin_dir


def apt_helpers(bin_dir: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "bash"), "-c", f'set -euo pipefail; FEATURE=x; . "{LIB}"; {script}'],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(bin_dir)},
    )


def test_apt_get_install_does_nothing_when_every_package_is_installed(fake_apt: Path) -> None:
    result = apt_helpers(fake_apt, "apt_get_install bash dpkg; echo done")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    assert not (fake_apt.parent / "apt-get.log").exists()


def test_apt_get_install_updates_once_and_installs_only_what_is_missing(fake_apt: Path) -> None:
    result = apt_helpers(
        fake_apt, "apt_get_install bash isofeat-test-missing; apt_get_install isofeat-test-other"
    )
    assert result.returncode == 0, result.stderr
    assert "x: installing isofeat-test-missing (apt)" in result.stdout
    calls = (fake_apt.parent / "apt-get.log").read_text().splitlines()
    assert calls == [
        "update -qq --error-on=any",
        "install -y -qq --no-install-recommends isofeat-test-missing",
        "install -y -qq --no-install-recommends isofeat-test-other",
    ]


def test_apt_get_install_stops_when_the_lists_do_not_update(fake_apt: Path) -> None:
    apt = fake_apt / "apt-get"
    apt.write_text(f"#!{fake_apt / 'bash'}\n[ \"$1\" != update ] || exit 100\necho installed\n")
    result = apt_helpers(fake_apt, "apt_get_install isofeat-test-missing; echo not-reached")
    assert result.returncode == 1
    assert "ERROR (x): apt-get update failed (see above)." in result.stderr
    assert "installed" not in result.stdout and "not-reached" not in result.stdout
