"""Tasks on another machine's Docker engine: ``isofeat task new NAME --on HOST``.

The remote machine runs the same isofeat as here. The local side only moves data over the
system ``ssh`` client (host keys checked, no prompts, nothing secret on a command line):

* the task's base commit is pushed into a repository that isofeat keeps on the remote,
  ``~/.local/share/isofeat/remote/<id>/repo`` (never a folder the agent can write), and the
  remote ``isofeat task new NAME --base SHA --up`` makes the worktree, the agent's own git and
  the environment there, with the same template, whitelists and Features. The proxy and the
  whole boundary run on the remote engine, next to the agent. The local repository never
  leaves this machine except for the objects of the base commit.
* the isofeat images the remote engine lacks are shipped (``docker save | ssh docker load``):
  nothing can be pulled, and an offline remote needs them too.
* ``task merge`` asks the remote ``isofeat task export NAME`` to import the agent's branch into
  that repository as data (the same guarded import as a local merge), then fetches it over
  ssh with fsck on and hooks off, and merges with the same refusals as a local task.
* ``task list``, ``task rm`` and ``notify watch --on`` run the remote isofeat and read its
  JSON as data.

What is local about a remote task is a small record in the main repository's state folder
(``remote-tasks/NAME.json``), which no sandbox can write.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from isofeat import __version__
from isofeat.errors import EXIT_DENIED, IsofeatError

Log = Callable[[str], None]

#: A ssh_config(5) file to use instead of ~/.ssh/config (``ssh -F``); tests and CI set it.
ISOFEAT_SSH_CONFIG = "ISOFEAT_SSH_CONFIG"
#: Where the remote keeps its repositories, relative to the remote user's home.
REMOTE_ROOT = ".local/share/isofeat/remote"
RECORDS = "remote-tasks"
REMOTE_PATH = 'PATH="$HOME/.local/bin:$PATH"; export PATH'
#: ``--install`` puts isofeat in a venv here (relative to the remote home).
REMOTE_VENV = ".local/share/isofeat/venv"
#: A folder holding an isofeat wheel (the template reads it too); ``--install`` ships it.
ISOFEAT_WHEEL_DIR = "ISOFEAT_WHEEL_DIR"
BASE_PREFIX = "refs/isofeat/base/"
EXPORT_PREFIX = "refs/isofeat/tasks/"
#: What ``--on`` accepts: ``[user@]host`` (host may be an ssh_config alias or a Docker
#: context name) or ``ssh://[user@]host[:port]``. Nothing may start with ``-``: ssh would read
#: the destination as an option (``-oProxyCommand=...`` runs a command on this machine).
_USER = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}"
_HOSTNAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}"
_DEST = re.compile(rf"(?:(?P<user>{_USER})@)?(?P<host>{_HOSTNAME})")
_URL = re.compile(rf"ssh://(?:(?P<user>{_USER})@)?(?P<host>{_HOSTNAME})(?::(?P<port>[0-9]{{1,5}}))?/?")
_HOST_FIX = ("give user@host, a Host name from ~/.ssh/config, ssh://user@host:port, or a Docker "
             "context whose endpoint is ssh:// (letters, digits, '.', '_', '-'; not starting "
             "with '-')")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]|\x1b\[[0-9;?]*[A-Za-z]")
# Tools the remote must have; what to do when one is missing.
REQUIREMENTS = {
    "git": "install git (apt-get install git)",
    "docker": "install Docker Engine 20.10 or newer (apt-get install docker.io)",
    "engine": "start the Docker engine and let this user reach it (`docker info` must work "
              "over ssh: add the user to the docker group)",
    "compose": "install Compose v2 (`docker compose`; the docker-compose-plugin package)",
    "devcontainer": "install the devcontainer CLI: npm install -g @devcontainers/cli (Node 20+)",
    "isofeat": f"install isofeat {__version__}: pipx install isofeat=={__version__}",
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def clean_line(text: str) -> str:
    """A remote line for this terminal: escape sequences and control characters removed."""
    return _CONTROL.sub("", text)[:300]


class Remote:
    """One SSH destination: what ``ssh`` and ``git`` are given, and nothing more."""

    def __init__(self, label: str, destination: str, port: int | None = None) -> None:
        self.label = label  # as the user named it (a host, an alias or a Docker context)
        self.destination = destination  # [user@]host
        self.port = port

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "destination": self.destination, "port": self.port}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Remote:
        port = data.get("port")
        return validate_host(str(data["destination"]) if port is None else
                             f"ssh://{data['destination']}:{int(port)}", label=str(data["label"]))

    def ssh_argv(self, environ: Mapping[str, str] = os.environ, *, port: bool = True) -> list[str]:
        # BatchMode: never a password or passphrase prompt (keys come from the agent or
        # ssh_config); StrictHostKeyChecking=yes: an unknown or changed host key is refused.
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15"]
        config = environ.get(ISOFEAT_SSH_CONFIG)
        if config:
            argv += ["-F", config]
        if port and self.port is not None:
            argv += ["-p", str(self.port)]
        return argv

    def command(self, script: str, environ: Mapping[str, str] = os.environ) -> list[str]:
        """``ssh ... -- DEST SCRIPT``: ``--`` ends ssh's options whatever follows.

        A command over ssh gets no login shell, so ``~/.local/bin`` (where pipx, ``pip
        --user`` and ``--install`` put isofeat and the devcontainer CLI) is added to PATH.
        """
        return [*self.ssh_argv(environ), "--", self.destination, f"{REMOTE_PATH}; {script}"]

    def git_url(self, path: str) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{self.destination}{port}/~/{path}"

    def git_ssh_command(self, environ: Mapping[str, str] = os.environ) -> str:
        # git adds the port and destination from the URL itself.
        return shlex.join(self.ssh_argv(environ, port=False))

    def __repr__(self) -> str:
        return f"Remote({self.label!r}, {self.destination!r}, {self.port!r})"


def validate_host(value: str, *, label: str | None = None) -> Remote:
    """Parse ``--on HOST`` without asking anyone (exit 2 with the fix when it is bad)."""
    if value.startswith("-"):
        raise IsofeatError(
            f"--on {value!r}: an SSH destination may not start with '-' (ssh would read it as "
            "an option, and -oProxyCommand runs a command on this machine)", fix=_HOST_FIX)
    match = _URL.fullmatch(value)
    if match:
        port = int(match["port"]) if match["port"] else None
        if port is not None and not 0 < port < 65536:
            raise IsofeatError(f"--on {value!r}: port {port} is out of range", fix=_HOST_FIX)
    else:
        match = _DEST.fullmatch(value)
        port = None
    if match is None or ".." in value:
        raise IsofeatError(f"--on {value!r} is not an SSH destination", fix=_HOST_FIX)
    user, host = match["user"], match["host"]
    return Remote(label or value, f"{user}@{host}" if user else host, port)


def resolve_host(value: str, environ: Mapping[str, str] = os.environ) -> Remote:
    """``--on HOST``: a Docker context of that name if one exists (its endpoint must be
    ``ssh://``), else an SSH destination."""
    remote = validate_host(value)
    if "@" in value or value.startswith("ssh://"):
        return remote
    try:
        proc = subprocess.run(
            ["docker", "context", "inspect", "--format", "{{json .Endpoints.docker.Host}}",
             "--", value],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return remote  # no docker client here: HOST is an ssh destination
    if proc.returncode != 0:
        return remote
    try:
        endpoint = json.loads(proc.stdout.strip() or '""')
    except json.JSONDecodeError:
        endpoint = ""
    if not isinstance(endpoint, str) or not endpoint.startswith("ssh://"):
        raise IsofeatError(
            f"--on {value!r} is a Docker context whose endpoint is {str(endpoint)[:80]!r}, "
            "not ssh://: isofeat reaches a remote machine over SSH only",
            fix=f"docker context create NAME --docker host=ssh://user@host, or give "
                f"user@host instead of {value!r}")
    return validate_host(endpoint.rstrip("/"), label=value)


# --- running things on the remote -------------------------------------------------------------

#: What ssh's exit status 255 means when it printed nothing: its client exits 255 both when
#: the connection fails and when the remote command ends on a signal (OpenSSH records no
#: exit status then), and a LogLevel of ERROR hides "Connection closed by ...".
SILENT_255 = ("ssh exited 255 with no message: the connection closed early, or the command "
              "there ended on a signal")


def _unreachable(remote: Remote, proc: subprocess.CompletedProcess[str]) -> IsofeatError:
    last = clean_line((proc.stderr or "").strip().splitlines()[-1] if proc.stderr.strip() else "")
    return IsofeatError(
        f"cannot reach {remote.label} over ssh: {last or SILENT_255}",
        fix=f"make `ssh {remote.destination} true` work without a prompt: the key in "
            "ssh-agent or ssh_config, the host key in known_hosts (ssh once by hand and check "
            "its fingerprint)", code=EXIT_DENIED)


def ssh(remote: Remote, script: str, *, environ: Mapping[str, str] = os.environ,
        input_text: str | None = None, timeout: float = 120, check: bool = True,
        ) -> subprocess.CompletedProcess[str]:
    """Run a shell ``script`` on the remote (every value in it quoted by the caller)."""
    try:
        proc = subprocess.run(remote.command(script, environ), input=input_text,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise IsofeatError("the ssh client is not installed",
                           fix="install OpenSSH's client (apt-get install openssh-client)"
                           ) from None
    except subprocess.TimeoutExpired:
        raise IsofeatError(f"{remote.label} did not answer within {timeout:.0f} s",
                           fix="check the machine and the network, then try again",
                           code=EXIT_DENIED) from None
    if proc.returncode == 255:
        raise _unreachable(remote, proc)
    if check and proc.returncode != 0:
        raise IsofeatError(
            f"on {remote.label}: {clean_line(proc.stderr.strip()[-300:]) or 'failed'}",
            fix="read the remote's message above", code=EXIT_DENIED)
    return proc


def stream(remote: Remote, script: str, log: Log, *, environ: Mapping[str, str] = os.environ,
           fix: str = "read its output above") -> str:
    """Run ``script``, relaying its stderr line by line (cleaned); return its stdout."""
    proc = subprocess.Popen(remote.command(script, environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    import threading

    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    chunks: list[str] = []

    def read_stdout() -> None:
        chunks.append(stdout.read())

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    tail: list[str] = []
    for raw in stderr:
        line = clean_line(raw.rstrip())
        if line:
            log(f"    [{remote.label}] {line}")
            tail = [*tail[-20:], line]
    code = proc.wait()
    reader.join()
    if code == 255:
        raise _unreachable(remote, subprocess.CompletedProcess([], 255, "", "\n".join(tail)))
    if code != 0:
        raise IsofeatError(f"on {remote.label}: the remote isofeat failed (exit {code})",
                           fix=fix, code=EXIT_DENIED)
    return "".join(chunks)


def remote_repo(main_workspace: Path) -> str:
    """The remote repository for this local repository (relative to the remote home)."""
    import hashlib
    import socket

    from isofeat.layout import env_id_for

    slug = env_id_for(main_workspace).rsplit("-", 1)[0]
    where = f"{socket.gethostname()}:{os.path.realpath(main_workspace)}"
    digest = hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{REMOTE_ROOT}/{slug}-{digest}/repo"


def _cd(repo: str) -> str:
    return f"cd -- {shlex.quote(repo)}"


# --- checks and images ---------------------------------------------------------------------

_PROBE = r"""
for t in git docker devcontainer isofeat; do
  if command -v "$t" >/dev/null 2>&1; then echo "have $t"; else echo "missing $t"; fi
done
if docker info >/dev/null 2>&1; then echo "have engine"; else echo "missing engine"; fi
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
  echo "have compose"; else echo "missing compose"; fi
v="$(isofeat --version 2>/dev/null)" && echo "version ${v#isofeat }"
"""


def _probe(remote: Remote, environ: Mapping[str, str]) -> tuple[list[str], str | None]:
    out = ssh(remote, _PROBE, environ=environ, check=False).stdout
    missing = [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("missing ")]
    version = next((line.split(None, 1)[1].strip() for line in out.splitlines()
                    if line.startswith("version ")), None)
    return missing, version


def local_wheel(main_workspace: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """A wheel of exactly this isofeat: $ISOFEAT_WHEEL_DIR, else the one the template put
    beside the local Features."""
    folders = [Path(environ[ISOFEAT_WHEEL_DIR])] if environ.get(ISOFEAT_WHEEL_DIR) else []
    folders.append(main_workspace / ".devcontainer" / "features" / "isofeat" / "wheels")
    for folder in folders:
        found = sorted(folder.glob(f"isofeat-{__version__}-*.whl"))
        if found and found[-1].is_file() and not found[-1].is_symlink():
            return found[-1]
    return None


def install_tools(remote: Remote, main_workspace: Path, log: Log,
                  environ: Mapping[str, str] = os.environ) -> list[str]:
    """``--install``: what isofeat can install for the remote user, under ~/.local: isofeat
    from a wheel of this version (in a venv), the devcontainer CLI with the remote's npm."""
    missing, version = _probe(remote, environ)
    done: list[str] = []
    if "isofeat" in missing or version != __version__:
        wheel = local_wheel(main_workspace, environ)
        if wheel is None:
            raise IsofeatError(
                f"no wheel of isofeat {__version__} here to install on {remote.label}",
                fix=f"set {ISOFEAT_WHEEL_DIR} to a folder holding isofeat-{__version__}-*.whl "
                    "(pip wheel --no-deps -w DIR <isofeat checkout>), or install isofeat there")
        log(f"==> {remote.label}: installing {wheel.name} into ~/{REMOTE_VENV}")
        target = f"{REMOTE_VENV}/{wheel.name}"
        q = shlex.quote
        script = (
            f"mkdir -p -- {q(REMOTE_VENV)} .local/bin && cat > {q(target)} && "
            f"{{ [ -x {q(REMOTE_VENV)}/bin/pip ] || python3 -m venv -- {q(REMOTE_VENV)}; }} && "
            f"{q(REMOTE_VENV)}/bin/pip install --quiet --disable-pip-version-check "
            f"--force-reinstall {q(target)} && rm -f -- {q(target)} && "
            f"ln -sfn \"$HOME\"/{q(REMOTE_VENV)}/bin/isofeat .local/bin/isofeat")
        proc = subprocess.run(remote.command(script, environ), input=wheel.read_bytes(),
                              capture_output=True, check=False, timeout=900)
        if proc.returncode != 0:
            raise IsofeatError(
                f"installing isofeat on {remote.label} failed: "
                f"{clean_line(proc.stderr.decode(errors='replace').strip()[-300:])}",
                fix="it needs python3 with venv there (apt-get install python3-venv) and its "
                    "package index for the dependencies", code=EXIT_DENIED)
        done.append("isofeat")
    if "devcontainer" in missing:
        log(f"==> {remote.label}: npm install -g --prefix ~/.local @devcontainers/cli")
        npm = ssh(remote, "command -v npm >/dev/null || { echo 'npm is missing (Node 20+)' >&2; "
                          "exit 1; }; npm install -g --prefix \"$HOME/.local\" "
                          "@devcontainers/cli", environ=environ, check=False, timeout=900)
        if npm.returncode != 0:
            raise IsofeatError(
                f"installing the devcontainer CLI on {remote.label} failed: "
                f"{clean_line(npm.stderr.strip()[-300:])}",
                fix="install Node 20+ with npm there, then run this again", code=EXIT_DENIED)
        done.append("devcontainer")
    return done


def check_remote(remote: Remote, environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """What the remote has; raise with every missing piece and its fix at once."""
    missing, version = _probe(remote, environ)
    problems = [f"{name}: {REQUIREMENTS[name]}" for name in REQUIREMENTS if name in missing]
    if "isofeat" not in missing and version != __version__:
        problems.append(f"isofeat: {remote.label} has {clean_line(version or '?')}, this machine "
                        f"{__version__}; {REQUIREMENTS['isofeat']}")
    if problems:
        raise IsofeatError(
            f"{remote.label} cannot run tasks yet; missing:\n  " + "\n  ".join(problems),
            fix="install what is listed on the remote machine (docs/remote.md), or pass "
                "--install for isofeat and the devcontainer CLI; then run this again",
            code=EXIT_DENIED)
    return {"version": version}


def needed_images(devcontainer: Path) -> list[str]:
    """The isofeat images an environment of this project runs (docs/remote.md)."""
    from isofeat import layout
    from isofeat.settings import read_settings

    images = [layout.BASE_IMAGE, layout.PROXY_IMAGE]
    if read_settings(devcontainer).docker_in_docker:
        images += [layout.DIND_IMAGE, f"{layout.DIND_PROXY_REPOSITORY}:{__version__}"]
    return images


def optional_images() -> list[str]:
    """Images an environment runs only sometimes: the credential broker, when a secret is
    set on the remote (docs/secrets.md). Shipped when this machine has them; never required."""
    from isofeat import layout

    return [layout.BROKER_IMAGE]


def local_image_ids(images: Sequence[str]) -> dict[str, str]:
    ids = {}
    for image in images:
        proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", "--", image],
                              capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode == 0:
            ids[image] = proc.stdout.strip()
    return ids


def remote_image_ids(remote: Remote, images: Sequence[str],
                     environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    script = "; ".join(
        f"printf '%s ' {shlex.quote(i)}; docker image inspect --format '{{{{.Id}}}}' -- "
        f"{shlex.quote(i)} 2>/dev/null || echo" for i in images)
    ids = {}
    for line in ssh(remote, script, environ=environ, check=False).stdout.splitlines():
        name, _, image_id = line.partition(" ")
        if name in images and image_id.strip().startswith("sha256:"):
            ids[name] = image_id.strip()
    return ids


def ship_images(remote: Remote, images: Sequence[str], log: Log,
                environ: Mapping[str, str] = os.environ,
                optional: Sequence[str] = ()) -> list[str]:
    """Send the images the remote lacks, or has in another build: ``docker save | docker load``.
    ``optional`` ones go along when this machine has them."""
    local = local_image_ids([*images, *optional])
    absent = [i for i in images if i not in local]
    there = remote_image_ids(remote, [*images, *optional], environ)
    send = [i for i in [*images, *optional] if i in local and there.get(i) != local[i]]
    missing_both = [i for i in absent if i not in there]
    if missing_both:
        raise IsofeatError(
            f"neither this machine nor {remote.label} has {', '.join(missing_both)}",
            fix="isofeat image build all (here; --on ships them), or on the remote machine")
    if not send:
        return []
    log(f"==> shipping {', '.join(send)} to {remote.label} (docker save | docker load)")
    save = subprocess.Popen(["docker", "save", "--", *send], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    load = subprocess.run(remote.command("docker load", environ), stdin=save.stdout,
                          capture_output=True, text=True, check=False)
    assert save.stdout is not None and save.stderr is not None
    save.stdout.close()
    save_err = save.stderr.read().decode(errors="replace")
    if save.wait() != 0 or load.returncode != 0:
        raise IsofeatError(
            f"shipping images to {remote.label} failed: "
            f"{clean_line((save_err or load.stderr).strip()[-300:])}",
            fix="check the disk space on both machines, then try again", code=EXIT_DENIED)
    return send


# --- local records -----------------------------------------------------------------------------

def _records_dir(main_workspace: Path, environ: Mapping[str, str]) -> Path:
    from isofeat.layout import Environment

    return Environment(main_workspace, environ).state_dir / RECORDS


def read_record(main_workspace: Path, name: str, environ: Mapping[str, str] = os.environ
                ) -> dict[str, Any] | None:
    path = _records_dir(main_workspace, environ) / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def records(main_workspace: Path, environ: Mapping[str, str] = os.environ
            ) -> list[dict[str, Any]]:
    folder = _records_dir(main_workspace, environ)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        data = read_record(main_workspace, path.stem, environ)
        if data is not None:
            found.append(data)
    return found


def _write_record(main_workspace: Path, record: Mapping[str, object],
                  environ: Mapping[str, str]) -> None:
    from isofeat.atomic import write_text

    folder = _records_dir(main_workspace, environ)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / f"{record['name']}.json", json.dumps(record, indent=2) + "\n")


# --- the verbs ------------------------------------------------------------------------------

def _copy_listed(main_workspace: Path, remote: Remote, repo: str, patterns: Sequence[str],
                 environ: Mapping[str, str]) -> list[str]:
    """The untracked files the project lists (``copyToTasks``) go into the remote repository's
    worktree, from where the remote ``task new`` copies them as it does here."""
    import io
    import tarfile

    files: list[str] = []
    for pattern in patterns:
        rel = Path(pattern)
        if rel.is_absolute() or ".." in rel.parts:
            raise IsofeatError(f"copyToTasks: {pattern!r} must be a path inside the repository",
                               fix="list relative paths or patterns such as .env or *.whl")
        for src in sorted(main_workspace.glob(pattern)):
            if src.is_symlink() or not src.is_file():
                raise IsofeatError(f"copyToTasks: {src} is not a regular file",
                                   fix="list regular files only (no folders or symlinks)")
            files.append(str(src.relative_to(main_workspace)))
    if not files:
        return []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel_name in files:
            info = tar.gettarinfo(str(main_workspace / rel_name), arcname=rel_name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(main_workspace / rel_name, "rb") as fh:
                tar.addfile(info, fh)
    proc = subprocess.run(
        remote.command(f"{_cd(repo)} && tar --no-same-owner --no-overwrite-dir -xf -", environ),
        input=buf.getvalue(), capture_output=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise IsofeatError(f"copying {', '.join(files)} to {remote.label} failed: "
                           f"{clean_line(proc.stderr.decode(errors='replace')[-300:])}",
                           fix="check the remote's disk space and permissions", code=EXIT_DENIED)
    return files


def require_images(remote: Remote, images: Sequence[str],
                   environ: Mapping[str, str] = os.environ) -> None:
    """``--images remote``: the remote built its own (its own extra CAs); check they exist."""
    there = remote_image_ids(remote, images, environ)
    missing = [i for i in images if i not in there]
    if missing:
        raise IsofeatError(f"{remote.label} has no {', '.join(missing)}",
                           fix=f"run `isofeat image build all` on {remote.label}, or leave out "
                               "--images remote (this machine ships its images)")


IMAGE_MODES = ("ship", "remote")


def new(start: Path, name: str, host: str, base: str | None, accept_devcontainer: bool = False,
        environ: Mapping[str, str] = os.environ, log: Log = _stderr, images: str = "ship",
        install: bool = False) -> dict[str, object]:
    """``isofeat task new NAME --on HOST``: the worktree, the agent's git and the environment
    on the remote machine; here only a record."""
    from isofeat import tasks
    from isofeat.layout import Environment
    from isofeat.settings import read_settings

    tasks.validate_name(name)
    remote = resolve_host(host, environ)
    main = tasks.main_repo(start)
    if read_record(main.workspace, name, environ) is not None or tasks.find_task(main, name):
        raise IsofeatError(f"a task named {name!r} exists already",
                           fix=f"pick another name, or isofeat task rm {name}")
    base_ref = base or "HEAD"
    base_sha = None if base_ref.startswith("-") else tasks._sha(main, base_ref)
    if base_sha is None:
        raise IsofeatError(f"--base {base_ref!r} is not a commit", fix="name a branch, tag or sha")
    tasks._check_box(main, base_sha, accept_devcontainer, environ, log)
    box = Environment(main.workspace, environ).devcontainer

    log(f"==> checking {remote.label}")
    installed = install_tools(remote, main.workspace, log, environ) if install else []
    check_remote(remote, environ)
    shipped: list[str] = []
    if images == "remote":
        require_images(remote, needed_images(box), environ)
    else:
        shipped = ship_images(remote, needed_images(box), log, environ,
                              optional=optional_images())
    repo = remote_repo(main.workspace)
    log(f"==> {remote.label}:~/{repo}: pushing {base_sha[:12]}")
    ssh(remote, f"mkdir -p -- {shlex.quote(repo)} && {_cd(repo)} && "
                "{ [ -e .git ] || git init -q --template= . ; }", environ=environ)
    main.git("-c", f"core.sshCommand={remote.git_ssh_command(environ)}",
             "-c", "protocol.allow=never", "-c", "protocol.ssh.allow=always",
             "push", "--quiet", "--no-verify", remote.git_url(repo),
             f"{base_sha}:{BASE_PREFIX}{name}", environ=environ)
    # The remote repository's own worktree holds the base too: the remote `task new` reads
    # .devcontainer/isofeat.json there, and copies the copyToTasks files from there.
    ssh(remote, f"{_cd(repo)} && git checkout -q -f --detach {shlex.quote(base_sha)}",
        environ=environ)
    copied = _copy_listed(main.workspace, remote, repo,
                          read_settings(box).copy_to_tasks, environ)
    record: dict[str, object] = {
        "name": name, "remote": remote.to_json(), "repo": repo, "base": base_sha,
        "path": f"~/{repo}-{name}",
    }
    _write_record(main.workspace, record, environ)
    # The remote approves nothing by itself: this machine's approval (above) stands for it.
    script = (f"{_cd(repo)} && isofeat task new {shlex.quote(name)} --base "
              f"{shlex.quote(base_sha)} --up --accept-devcontainer --json")
    log(f"==> {remote.label}: isofeat task new {name} --up")
    out = stream(remote, script, log, environ=environ,
                 fix=f"read its output above; `isofeat task rm {name} --force` removes what "
                     "was made there")
    try:
        made = json.loads(out)
    except json.JSONDecodeError:
        made = {}
    record.update({"env_id": str(made.get("env_id", "")), "path": str(made.get("path", ""))})
    _write_record(main.workspace, record, environ)
    return {"name": name, "on": remote.label, "branch": f"task/{name}", "base": base_sha,
            "remote_path": record["path"], "env_id": record["env_id"], "copied": copied,
            "images_shipped": shipped, "installed": installed, "up": True}


def _remote_of(record: Mapping[str, Any]) -> Remote:
    return Remote.from_json(record["remote"])


def list_remote(start: Path, environ: Mapping[str, str] = os.environ, log: Log = _stderr,
                ) -> list[dict[str, object]]:
    """Every remote task of this repository, one ssh call per remote repository."""
    from isofeat import tasks

    main = tasks.main_repo(start)
    mine = records(main.workspace, environ)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in mine:
        remote = _remote_of(record)
        groups.setdefault((json.dumps(remote.to_json()), record["repo"]), []).append(record)
    items: list[dict[str, object]] = []
    for (_key, repo), group in groups.items():
        remote = _remote_of(group[0])
        try:
            out = ssh(remote, f"{_cd(repo)} && isofeat task list --json", environ=environ,
                      timeout=60).stdout
            listed = json.loads(out or "[]")
        except (IsofeatError, json.JSONDecodeError) as err:
            log(f"isofeat: warning: {remote.label}: {clean_line(str(err))}")
            listed = None
        by_name = {t.get("name"): t for t in listed or [] if isinstance(t, dict)}
        for record in group:
            info = by_name.get(record["name"], {})
            head = _sha_or_none(info.get("agent_head"))
            items.append({
                "name": record["name"], "where": remote.label,
                "path": f"{remote.label}:{clean_line(str(info.get('path', record['path'])))}",
                "branch": f"task/{record['name']}",
                "ahead": _int(info.get("ahead")), "behind": _int(info.get("behind")),
                "env_id": clean_line(str(info.get("env_id", record.get("env_id", "")))),
                "agent_head": head,
                # Whether the work is safe is a question about this repository, not the
                # remote one (which holds only what was pushed to start tasks).
                "unmerged": bool(head) and head != record["base"]
                and not tasks._merged_elsewhere(main, head or "", ""),
                "running": bool(info.get("running")),
                "pending_notifications": _int(info.get("pending_notifications")),
                "reachable": listed is not None,
            })
    return items


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _sha_or_none(value: object) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40}(?:[0-9a-f]{24})?", value):
        return value
    return None


def export(start: Path, name: str, environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """On the remote (``isofeat task export NAME``): the agent's ``task/NAME`` into this
    repository as ``refs/isofeat/tasks/NAME``, read as data (hostgit.import_refs), so that
    the machine that started the task can fetch it over ssh."""
    from isofeat import hostgit, tasks

    tasks.validate_name(name)
    main = tasks.main_repo(start)
    wt = tasks.find_task(main, name)
    path = Path(wt["worktree"]) if wt else tasks.task_path(main, name)
    branch = f"refs/heads/{tasks.BRANCH_PREFIX}{name}"
    got = hostgit.import_refs(main, tasks.agent_git(path, environ),
                              {branch: f"{EXPORT_PREFIX}{name}"},
                              scratch=tasks._state(main.workspace, environ), environ=environ)
    sha = got.get(f"{EXPORT_PREFIX}{name}") or tasks._sha(main, branch)
    if sha is None:
        raise IsofeatError(f"no task {name!r} here", fix="see `isofeat task list`")
    if not got:  # the sandbox made no git yet: export the host's branch
        main.git("update-ref", f"{EXPORT_PREFIX}{name}", sha)
    return {"name": name, "ref": f"{EXPORT_PREFIX}{name}", "sha": sha}


def merge(start: Path, name: str, allow_devcontainer: bool,
          environ: Mapping[str, str] = os.environ, log: Log = _stderr) -> dict[str, object]:
    """``task merge`` of a remote task: export there, fetch as data, merge here."""
    from isofeat import tasks

    tasks.validate_name(name)
    main = tasks.main_repo(start)
    record = read_record(main.workspace, name, environ)
    if record is None:
        raise IsofeatError(f"no remote task {name!r}", fix="see `isofeat task list`")
    remote = _remote_of(record)
    into = tasks._current_branch(main)
    if main.git("status", "--porcelain").stdout.strip():
        raise IsofeatError(
            f"{main.workspace} has uncommitted changes",
            fix="commit or stash them first; a merge must not mix with work in progress")
    out = ssh(remote, f"{_cd(record['repo'])} && isofeat task export {shlex.quote(name)} --json",
              environ=environ, timeout=600).stdout
    try:
        sha = _sha_or_none(json.loads(out).get("sha"))
    except (json.JSONDecodeError, AttributeError):
        sha = None
    if sha is None:
        raise IsofeatError(f"{remote.label} gave no commit for task {name}",
                           fix="run `isofeat task export NAME` there and read its message",
                           code=EXIT_DENIED)
    ref = f"{EXPORT_PREFIX}{name}"
    main.git("-c", f"core.sshCommand={remote.git_ssh_command(environ)}",
             "-c", "protocol.allow=never", "-c", "protocol.ssh.allow=always",
             "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
             "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
             remote.git_url(record["repo"]), f"+{ref}:{ref}", environ=environ)
    tip = tasks._sha(main, ref)
    if tip != sha:
        raise IsofeatError(f"fetched {str(tip)[:12]} from {remote.label}, expected {sha[:12]}",
                           fix="run the merge again", code=EXIT_DENIED)
    log(f"==> fetched {remote.label}'s task/{name} ({sha[:12]})")
    hits = tasks._refuse_host_tool_changes(main, ref, f"task/{name}", allow_devcontainer)
    done = main.git("merge", "--no-ff", "--no-edit", "-m", f"Merge task {name}", ref, check=False)
    if done.returncode != 0:
        conflicts = main.git("diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
        main.git("merge", "--abort", check=False)
        raise IsofeatError(
            f"merging task/{name} into {into} stopped"
            + (f" on conflicts in {', '.join(conflicts)}" if conflicts else "")
            + "; nothing was changed",
            fix=f"merge by hand: git merge {ref}, or rebase the task in its sandbox")
    if hits:
        tasks._check_box(main, "HEAD", True, environ, log)
    return {"name": name, "on": remote.label, "branch": f"task/{name}", "merged_into": into,
            "merged": sha, "head": tasks._sha(main, "HEAD"), "host_tool_changes": hits}


def rm(start: Path, name: str, force: bool, environ: Mapping[str, str] = os.environ,
       log: Log = _stderr) -> dict[str, object]:
    """Remove a remote task: its environment, worktree, agent git and refs there; the repository
    there too when it holds no other task; the record here."""
    from isofeat import tasks

    tasks.validate_name(name)
    main = tasks.main_repo(start)
    record = read_record(main.workspace, name, environ)
    if record is None:
        raise IsofeatError(f"no remote task {name!r}", fix="see `isofeat task list`")
    remote = _remote_of(record)
    repo = str(record["repo"])
    if not force:
        listed = {t["name"]: t for t in list_remote(start, environ, log) if t["name"] == name}
        item = listed.get(name)
        if item is None or not item["reachable"]:
            raise IsofeatError(f"cannot tell whether {remote.label} holds unmerged work of {name}",
                               fix=f"isofeat task rm {name} --force removes it anyway")
        head = item["agent_head"]
        if isinstance(head, str) and head != record["base"] and not tasks._merged_elsewhere(
                main, head, ""):
            raise IsofeatError(
                f"the sandbox's task/{name} at {head[:12]} on {remote.label} is in no branch here",
                fix=f"isofeat task merge {name} first, or isofeat task rm {name} --force")
    q = shlex.quote
    # The remote repository's own state folder (its approved .devcontainer/, import scratch):
    # named by its env id, worked out from the absolute path the remote reported.
    task_abs = str(record.get("path") or "")
    main_state = ""
    if task_abs.startswith("/") and task_abs.endswith(f"-{name}"):
        from isofeat.layout import env_id_for_real_path

        main_id = env_id_for_real_path(task_abs[: -len(name) - 1])
        main_state = f" \"${{XDG_STATE_HOME:-$HOME/.local/state}}/isofeat/envs/\"{q(main_id)}"
    script = (
        f"{_cd(repo)} && isofeat task rm {q(name)} --force --json && "
        f"git update-ref -d {q(BASE_PREFIX + name)} && "
        f"{{ git update-ref -d {q(EXPORT_PREFIX + name)} 2>/dev/null || true; }} && "
        # The last task gone: the repository goes too (it only ever held pushed commits).
        "if [ \"$(git worktree list --porcelain | grep -c '^worktree ')\" = 1 ]; then "
        f"cd && rm -rf -- {q(str(Path(repo).parent))}{main_state} && echo removed-repo; fi")
    out = stream(remote, script, log, environ=environ)
    (_records_dir(main.workspace, environ) / f"{name}.json").unlink(missing_ok=True)
    main.git("update-ref", "-d", f"{EXPORT_PREFIX}{name}", check=False)
    return {"name": name, "on": remote.label, "repo_removed": "removed-repo" in out}


# --- notifications ------------------------------------------------------------------------

MAX_LINE = 16 * 1024


def watch(host: str, backend: str, once: bool, as_json: bool,
          environ: Mapping[str, str] = os.environ, stdout: IO[str] | None = None,
          stderr: IO[str] | None = None) -> int:
    """``isofeat notify watch --on HOST``: the remote watcher's JSON lines, checked again here
    (size, schema, cleaned text, label from the remote folder name plus the host) and shown
    by a local backend. The remote removes what it forwarded."""
    from datetime import datetime

    from isofeat.notify import ENV_ID_RE, URGENCIES
    from isofeat.notify.backends import Display, Shown
    from isofeat.notify.message import (
        MAX_MESSAGE_CHARS,
        MAX_SOURCE_CHARS,
        MAX_TITLE_CHARS,
        Notification,
        clean_text,
    )

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    remote = resolve_host(host, environ)
    display = Display(backend, stdout=out, stderr=err)
    script = "isofeat notify watch --backend stdout --json"
    if once:
        script += " --once"
    else:
        # No terminal, so no hangup: the remote watcher ends when our ssh closes its stdin.
        # (A background job's stdin is /dev/null in sh: the ssh stdin goes to it as fd 3.)
        script = (f"exec 3<&0; {script} </dev/null 3<&- & w=$!; "
                  "( cat <&3 >/dev/null 2>&1; kill $w 2>/dev/null ) & exec 3<&-; wait $w")
    proc = subprocess.Popen(remote.command(script, environ), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        while True:
            raw = proc.stdout.readline(MAX_LINE + 1)
            if not raw:
                break
            if len(raw) > MAX_LINE:
                print(f"isofeat notify: warning: [{remote.label}] a line over {MAX_LINE} bytes "
                      "was dropped", file=err, flush=True)
                while raw and not raw.endswith(b"\n"):
                    raw = proc.stdout.readline(MAX_LINE + 1)
                continue
            try:
                doc = json.loads(raw)
                env = doc["env"]
                urgency = doc["urgency"]
                if not (isinstance(env, str) and ENV_ID_RE.fullmatch(env)
                        and urgency in URGENCIES):
                    raise ValueError("bad env or urgency")
                message, cut = clean_text(str(doc.get("message") or ""), MAX_MESSAGE_CHARS)
                title, _ = clean_text(str(doc.get("title") or ""), MAX_TITLE_CHARS)
                source, _ = clean_text(str(doc.get("source") or ""), MAX_SOURCE_CHARS)
                ident, _ = clean_text(str(doc.get("id") or ""), 64)
                created, _ = clean_text(str(doc.get("created") or ""), 40)
                recovered = doc.get("recovered") is True
            except (ValueError, KeyError, TypeError, AttributeError):
                print(f"isofeat notify: warning: [{remote.label}] dropped a line that is not a "
                      "notification", file=err, flush=True)
                continue
            note = Notification(urgency=urgency, message=message, title=title, source=source,
                                id=ident, created=created, truncated=cut)
            item = Shown(f"{remote.label}/{env}", note, recovered=recovered)
            received = datetime.now().astimezone()
            if as_json:
                print(json.dumps({"env": env, "on": remote.label, "urgency": urgency,
                                  "title": title, "message": message, "source": source,
                                  "id": ident, "created": created,
                                  "received": received.isoformat(timespec="seconds"),
                                  "recovered": recovered}),
                      file=out, flush=True)
                if display.tool is None:
                    continue
            display.show(item, received.strftime("%H:%M:%S"))
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
        code = proc.wait()
    tail = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
    if code == 255:
        raise _unreachable(remote, subprocess.CompletedProcess([], 255, "", tail))
    if code not in (0, -15):  # -15: our own terminate() after Ctrl-C
        raise IsofeatError(
            f"the watcher on {remote.label} stopped (exit {code}): "
            f"{clean_line(tail.strip()[-300:])}",
            fix=f"check that `isofeat notify watch --once` works on {remote.label}",
            code=EXIT_DENIED)
    return 0
