"""Tasks on another machine's Docker engine, reached only over SSH (issue 14).

The "remote machine" is a container on this engine: sshd on a loopback port in front of a
nested Docker engine of its own (tests/docker/remote/Dockerfile, FROM the isofeat DinD image in
its rootful mode, without --privileged). This side talks to it with the system ssh client only,
host key checked (the test writes a known_hosts for the container's fresh key). Nothing is
pulled there: `task new --on` ships the isofeat images.

One remote, one task (the machine has 2 cores and others test beside us): it comes up there,
the sandbox self-test passes there, a notification comes back, a merge returns the work, the
remote refuses a task whose proxy cannot start, and `task rm` removes everything there.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isofeat import remote as remote_mod
from isofeat.errors import IsofeatError

from .conftest import LABELS, RUN_ID
from .test_main_job import bake, host_env, need

pytestmark = pytest.mark.docker

HERE = Path(__file__).parent
REMOTE_TAG = "isofeat-test/remote:1"
ALIAS = "isofeat-test-remote"
TIMEOUT = 1800


def run(*argv: str, timeout: float = TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def remote_image(dind_image: str, proxy_image: str, isofeat_wheel_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> str:
    """isofeat-test/remote, FROM this checkout's DinD image, with isofeat from its wheel."""
    ctx = tmp_path_factory.mktemp("remote-image")
    for name in ("Dockerfile", "remote-entrypoint.sh"):
        shutil.copy2(HERE / "remote" / name, ctx / name)
    shutil.copytree(isofeat_wheel_dir, ctx / "wheels")
    built = run("docker", "build", "-q", "--label", f"isofeat.test={RUN_ID}",
                "--build-arg", f"DIND_IMAGE={dind_image}", "-t", REMOTE_TAG, str(ctx))
    assert built.returncode == 0, built.stderr[-4000:]
    return REMOTE_TAG


class Machine:
    """The remote: its container, and an ssh_config that names it (ISOFEAT_SSH_CONFIG)."""

    def __init__(self, container: str, config: Path) -> None:
        self.container = container
        self.config = config
        self.port = 22

    def ssh(self, script: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run("ssh", "-F", str(self.config), "-o", "BatchMode=yes", "--", ALIAS, script,
                   timeout=timeout)

    def engine(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The remote engine, as root in the remote container (observation only)."""
        return run("docker", "exec", self.container, "docker", *args, timeout=300)


@pytest.fixture(scope="module")
def machine(remote_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    folder = tmp_path_factory.mktemp("remote-ssh")
    key = folder / "id_ed25519"
    assert run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "isofeat-test",
               "-f", str(key)).returncode == 0
    name = f"isofeat-test-remote-{RUN_ID}"
    volume = f"{name}-engine"
    labels = [x for k, v in LABELS.items() for x in ("--label", f"{k}={v}")]
    assert run("docker", "volume", "create", *labels, volume).returncode == 0
    started = run(
        "docker", "run", "-d", "--name", name, *labels,
        # SYS_PTRACE: the nested runc opens /proc/PID/ns of containers that run as non-root
        # users (the proxy, the sandbox) for `docker exec`; root without it may not.
        "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--cap-add", "SYS_PTRACE",
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--cgroupns", "private", "-v", f"{volume}:/var/lib/isofeat-dind",
        "-p", "127.0.0.1::22",
        "-e", f"REMOTE_AUTHORIZED_KEY={(folder / 'id_ed25519.pub').read_text().strip()}",
        "-e", "ISOFEAT_DIND_BIP=10.231.0.1/24",
        "-e", "ISOFEAT_DIND_ADDRESS_POOL=base=10.231.0.0/16,size=24",
        remote_image)
    try:
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 120
        while run("docker", "exec", name, "docker", "info", timeout=30).returncode != 0:
            assert time.monotonic() < deadline, run("docker", "logs", name).stderr[-3000:]
            time.sleep(1)
        port = run("docker", "port", name, "22/tcp").stdout.split(":")[-1].strip()
        host_key = run("docker", "exec", name, "cat",
                       "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
        known = folder / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
        config = folder / "ssh_config"
        # The alias, and the plain address a Docker context names (ssh://remote@127.0.0.1:P).
        config.write_text(
            f"Host {ALIAS}\n  HostName 127.0.0.1\n  Port {port}\n  User remote\n"
            f"Host {ALIAS} 127.0.0.1\n"
            f"  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
            "  StrictHostKeyChecking yes\n  LogLevel ERROR\n")
        machine = Machine(name, config)
        machine.port = int(port)
        yield machine
    finally:
        run("docker", "rm", "-f", "-v", name, timeout=300)
        run("docker", "volume", "rm", "-f", volume, timeout=300)


def isofeat(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "isofeat", *args, cwd=cwd, env=env)


def test_unknown_host_key_is_refused(machine: Machine, tmp_path: Path) -> None:
    """Host-key checking is on: the same remote with an empty known_hosts is refused."""
    config = tmp_path / "ssh_config"
    config.write_text(machine.config.read_text().replace(
        "UserKnownHostsFile", f"UserKnownHostsFile {tmp_path / 'empty'} #"))
    with pytest.raises(IsofeatError) as err:
        remote_mod.ssh(remote_mod.validate_host(ALIAS), "true",
                       environ={remote_mod.ISOFEAT_SSH_CONFIG: str(config)})
    assert "cannot reach" in str(err.value) and "host key" in str(err.value)


def test_task_on_a_remote_engine_end_to_end(machine: Machine, tmp_path: Path,
                                            isofeat_wheel_dir: Path) -> None:
    need("ssh")
    env = host_env(tmp_path)
    env["ISOFEAT_WHEEL_DIR"] = str(isofeat_wheel_dir)
    env[remote_mod.ISOFEAT_SSH_CONFIG] = str(machine.config)
    # One agent: the ai-agents Feature brings git, which the agent commits with.
    repo = bake(tmp_path / "repo", env, agents="claude", project_name="remote demo")
    figures: dict[str, float] = {}

    # --- a remote without isofeat: every missing piece is named, nothing is made there -----
    assert run("docker", "exec", machine.container, "rm", "/usr/local/bin/isofeat").returncode == 0
    lacking = isofeat("task", "new", "t1", "--on", ALIAS, cwd=repo, env=env)
    assert lacking.returncode == 1, lacking.stderr
    assert "missing:" in lacking.stderr and "isofeat: install isofeat" in lacking.stderr
    assert "devcontainer:" not in lacking.stderr and "--install" in lacking.stderr
    assert machine.ssh("ls -A ~/.local/share/isofeat/remote 2>/dev/null").stdout == ""

    # --- task new --on --install: isofeat from this checkout's wheel into ~/.local there;
    # images shipped, git pushed, environment up there -----------------------------------------
    started = time.monotonic()
    made = isofeat("task", "new", "t1", "--on", ALIAS, "--install", "--json", cwd=repo, env=env)
    figures["task new --on --install (cold: isofeat installed, images shipped)"] = (
        time.monotonic() - started)
    assert made.returncode == 0, made.stderr[-6000:]
    result = json.loads(made.stdout)
    assert result["on"] == ALIAS and result["up"] and result["installed"] == ["isofeat"]
    where = machine.ssh("PATH=$HOME/.local/bin:$PATH; command -v isofeat; isofeat --version")
    assert ".local/bin/isofeat" in where.stdout, where
    assert "isofeat/proxy" in " ".join(result["images_shipped"])
    rpath = result["remote_path"]
    assert rpath.startswith("/home/remote/.local/share/isofeat/remote/"), rpath
    # Nothing of the task exists on this machine: no worktree, no branch, no environment.
    assert not (tmp_path / "repo-t1").exists()
    assert run("git", "-C", str(repo), "branch", "--list", "task/*").stdout.strip() == ""
    assert run("docker", "ps", "-q", "--filter",
               f"label=com.docker.compose.project=isofeat-{result['env_id']}").stdout == ""
    # ... and the proxy and the sandbox run on the remote engine.
    services = machine.engine("ps", "--filter",
                              f"label=com.docker.compose.project=isofeat-{result['env_id']}",
                              "--format", '{{.Label "com.docker.compose.service"}}')
    assert {"dev", "proxy"} <= set(services.stdout.split()), services

    def in_sandbox(script: str) -> subprocess.CompletedProcess[str]:
        return machine.ssh(f"cd -- {shlex.quote(rpath)} && devcontainer exec "
                           f"--workspace-folder . bash -c {shlex.quote(script)}", timeout=600)

    # --- the self-test passes there ----------------------------------------------------------
    doctor = in_sandbox("isofeat doctor --json")
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 0 and report["ok"], doctor.stdout[-4000:]
    names = {c["name"]: c["ok"] for c in report["checks"]}
    for needed in ("user", "capabilities", "no-docker-socket", "direct-egress", "dns",
                   "proxy-denies", "proxy-allows", "git", "host-access"):
        assert names.get(needed), (needed, names)

    # What one environment costs the remote engine (for docs/remote.md, not asserted).
    project = f"label=com.docker.compose.project=isofeat-{result['env_id']}"
    stats = machine.engine("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}")
    networks = machine.engine("network", "ls", "-q", "--filter", project).stdout.split()
    print(f"\nremote environment: {len(networks)} networks; memory: "
          + "; ".join(stats.stdout.strip().splitlines()), file=sys.stderr)
    hops = []
    for _ in range(5):
        started = time.monotonic()
        assert machine.ssh("true", timeout=60).returncode == 0
        hops.append(time.monotonic() - started)
    figures["one ssh round trip (new connection, median of 5)"] = sorted(hops)[2]

    # --- task list: local and remote together, with where each runs --------------------------
    started = time.monotonic()
    listed = isofeat("task", "list", "--json", cwd=repo, env=env)
    figures["task list with one remote task"] = time.monotonic() - started
    items = json.loads(listed.stdout)
    assert [(t["name"], t["where"], t["running"]) for t in items] == [("t1", ALIAS, True)]
    table = isofeat("task", "list", cwd=repo, env=env).stdout
    assert "WHERE" in table and ALIAS in table

    # --- a notification comes back over ssh --------------------------------------------------
    watcher = subprocess.Popen(
        [sys.executable, "-m", "isofeat", "notify", "watch", "--on", ALIAS, "--backend",
         "stdout", "--json"], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the remote watcher is up and has seen the folders
        sent = in_sandbox("isofeat notify send --urgency blocked "
                          "--title $'\\e]0;x\\a' 'needs input from the remote'")
        sent_at = time.monotonic()
        assert sent.returncode == 0, sent.stderr
        assert watcher.stdout is not None
        line = watcher.stdout.readline()
        figures["notification, sent to shown here (watching)"] = time.monotonic() - sent_at
    finally:
        watcher.terminate()
        watcher.wait(timeout=60)
    shown = json.loads(line)
    assert shown["on"] == ALIAS and shown["env"] == result["env_id"]
    assert shown["message"] == "needs input from the remote" and "\x1b" not in line

    # The same machine named by a Docker context whose endpoint is ssh://.
    ctx_env = {**env, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    assert run("docker", "context", "create", "farbox", "--docker",
               f"host=ssh://remote@127.0.0.1:{machine.port}", env=ctx_env).returncode == 0
    assert in_sandbox("isofeat notify send --urgency complete 'done, via a context'"
                      ).returncode == 0
    watch = ["notify", "watch", "--on", "farbox", "--once", "--backend", "stdout", "--json"]
    via_context = isofeat(*watch, cwd=repo, env=ctx_env)
    first_try = ""
    if via_context.returncode != 0 and remote_mod.SILENT_255 in via_context.stderr:
        # Seen in 2 of about 10 CI runs, at this step only: ssh exited 255 with no message
        # (LogLevel ERROR). Asked once more, and said, so that it stays visible.
        # sshd runs with -e: its side of that connection is in the container's log.
        sshd = run("docker", "logs", "--tail", "20", machine.container)
        print(f"notify watch --on farbox: retried after: {via_context.stderr.strip()[:200]}; "
              f"sshd said: {(sshd.stdout + sshd.stderr).strip()[-1500:]}; "
              f"lines shown before it: {via_context.stdout.strip()[:300]!r}")
        # The remote watcher ran and may have shown (and removed) the notification before
        # the connection closed: once seen in CI, the line came on the first try, not the
        # second. So it must be shown once over both tries.
        first_try = via_context.stdout
        via_context = isofeat(*watch, cwd=repo, env=ctx_env)
    assert via_context.returncode == 0, via_context.stderr
    (note,) = [json.loads(x) for x in (first_try + via_context.stdout).splitlines()
               if x.startswith("{")]
    assert (note["on"], note["message"]) == ("farbox", "done, via a context")

    # --- the agent commits; task merge brings the work back as data --------------------------
    work = in_sandbox("echo 'made on the remote' > remote-work.txt && git add remote-work.txt "
                      "&& git commit -qm 'remote work' && git rev-parse HEAD")
    assert work.returncode == 0, work.stderr
    agent_sha = work.stdout.split()[-1]
    refused = isofeat("task", "rm", "t1", cwd=repo, env=env)  # unmerged work: refused
    assert refused.returncode == 2 and "task merge t1" in refused.stderr, refused.stderr
    started = time.monotonic()
    merged = isofeat("task", "merge", "t1", "--json", cwd=repo, env=env)
    figures["task merge from the remote"] = time.monotonic() - started
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert json.loads(merged.stdout)["merged"] == agent_sha
    assert (repo / "remote-work.txt").read_text() == "made on the remote\n"

    # --- the remote refuses a task whose proxy cannot start, as a local one does -------------
    # Its own "proxy image" (built there: --images remote) exits at once.
    from isofeat.layout import PROXY_IMAGE

    broken = machine.ssh(f"printf 'FROM isofeat/base:bookworm\\nENTRYPOINT [\"false\"]\\n' | "
                         f"docker build -q -t {PROXY_IMAGE} -")
    assert broken.returncode == 0, broken.stderr
    second = isofeat("task", "new", "t2", "--on", ALIAS, "--images", "remote", cwd=repo,
                     env=env)
    assert second.returncode != 0, second.stderr[-3000:]
    assert "devcontainer up failed" in second.stderr, second.stderr[-3000:]
    dev_t2 = machine.engine("ps", "-q", "--filter", "label=com.docker.compose.service=dev",
                            "--filter", "status=running")
    assert len(dev_t2.stdout.split()) == 1, dev_t2.stdout  # t1's only
    assert isofeat("task", "rm", "t2", "--force", cwd=repo, env=env).returncode == 0

    # --- task rm removes everything there ----------------------------------------------------
    removed = isofeat("task", "rm", "t1", "--json", cwd=repo, env=env)
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert json.loads(removed.stdout)["repo_removed"]
    left = machine.engine("ps", "-aq")
    assert left.stdout.strip() == "", left.stdout
    assert machine.engine("volume", "ls", "-q").stdout.strip() == ""
    gone = machine.ssh("ls -A ~/.local/share/isofeat/remote; ls -A ~/.local/state/isofeat/envs "
                       "~/.local/state/isofeat/notify 2>/dev/null | grep -v -e '^$' -e ':$'")
    assert gone.stdout.strip() == "", gone.stdout
    started = time.monotonic()
    assert isofeat("task", "list", "--json", cwd=repo, env=env).stdout.strip() == "[]"
    figures["task list with no task (no ssh)"] = time.monotonic() - started

    # Figures for docs/remote.md: printed, never asserted.
    print("\nremote figures: " + ", ".join(f"{k} {v:.2f}s" for k, v in figures.items()),
          file=sys.stderr)
