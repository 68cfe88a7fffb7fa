"""Git on the host, next to a workspace that the agent can write.

The trust split (docs/threat-model.md, "Git"):

- The **user's git** is the workspace's own ``.git`` (a plain repository's folder, or for a
  task worktree the main repository's record of it). The sandbox never sees it, except its
  ``objects/`` folder, read-only. Only the host changes it.
- The **agent's git** is a repository of its own in the environment's state folder, mounted
  over ``/workspace/.git`` in the container. It borrows the user's objects read-only
  (``objects/info/alternates``) and holds only what the agent made. The host never runs git
  in it: its config, hooks, ``commondir`` and refs are whatever the agent wrote.

Work comes back through :func:`import_refs`: the host reads the agent's refs and object files
as plain data (no links followed, regular files only, sizes capped), puts them into a fresh
repository that the host made itself, and fetches from there with fsck on. Every git command
goes through :func:`run`, which names the git folder explicitly (no discovery, no pointers),
turns ``core.fsmonitor`` off and points ``core.hooksPath`` at ``/dev/null``.

Standard library only: ``isofeat init`` imports this on every open.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from isofeat.errors import EXIT_DENIED, IsofeatError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (init's start-up)
if TYPE_CHECKING:
    import subprocess

#: Where the container sees the agent's git when the workspace's ``.git`` is a file (a task
#: worktree): a read-only pointer file over ``/workspace/.git`` leads there.
AGENT_GIT_TARGET = "/run/isofeat/git"
#: Where the container sees the user's objects, read-only (the agent git's alternates).
OBJECTS_TARGET = "/run/isofeat/git-objects"
AGENT_NAME = "isofeat agent"
AGENT_EMAIL = "agent@isofeat.invalid"

#: Config that neutralises what a git command could run or obey from the worktree: no
#: fsmonitor daemon or command, no hooks, no prompts. Passed as GIT_CONFIG_* variables, which
#: git ranks with ``-c`` (above every config file).
SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("core.untrackedCache", "false"),
    ("credential.helper", ""),
)
_SAFE_ENV_DROP = r"GIT_.*"

# Patterns stay strings, compiled on first use (re caches them): a warm `isofeat init` needs
# none, and compiling them all would be a good part of this module's import time.
_HEX = r"[0-9a-f]{40}(?:[0-9a-f]{24})?"
#: Branch and tag names we accept from the agent: plain, no ``..``, no control characters.
_REFNAME = (r"refs/(?:heads|tags)/(?:[A-Za-z0-9_][A-Za-z0-9._+-]*/)*"
            r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_LOOSE = r"[0-9a-f]{2}", r"[0-9a-f]{38}(?:[0-9a-f]{24})?"
_PACK = r"pack-[0-9a-f]{40}(?:[0-9a-f]{24})?\.(?:pack|idx|rev)"
#: Upper bound on what one import copies out of the agent's git (override with
#: ISOFEAT_IMPORT_MAX_BYTES); a bigger history is refused, not truncated.
DEFAULT_MAX_IMPORT = 8 << 30
_MAX_REF_FILE = 4096
_MAX_PACKED_REFS = 64 << 20


def safe_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for host git: no inherited GIT_* (GIT_DIR would override our paths)."""
    env = {k: v for k, v in environ.items() if not re.fullmatch(_SAFE_ENV_DROP, k)}
    env["GIT_CONFIG_COUNT"] = str(len(SAFE_CONFIG))
    for i, (key, value) in enumerate(SAFE_CONFIG):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_OPTIONAL_LOCKS"] = "0"
    # Author and committer come from the user's own config, which stays in force.
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                 "GIT_COMMITTER_EMAIL", "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        if name in environ:
            env[name] = environ[name]
    return env


def run(git_dir: Path, *args: str, work_tree: Path | None = None, check: bool = True,
        input_text: str | None = None, environ: Mapping[str, str] = os.environ,
        ) -> subprocess.CompletedProcess[str]:
    """``git --git-dir=GIT_DIR [--work-tree=W] ARGS`` with the knobs off (see SAFE_CONFIG)."""
    import subprocess  # not at import: a warm `isofeat init` runs no git at all
    cmd = ["git", f"--git-dir={git_dir}"]
    if work_tree is not None:
        cmd.append(f"--work-tree={work_tree}")
    try:
        proc = subprocess.run(
            [*cmd, *args], input=input_text, capture_output=True, text=True,
            env=safe_env(environ), check=False,
            cwd=str(work_tree) if work_tree is not None else str(git_dir.parent),
        )
    except FileNotFoundError:
        raise IsofeatError("git is not installed on this computer",
                           fix="install git (apt-get install git, brew install git)") from None
    if check and proc.returncode != 0:
        raise IsofeatError(
            f"git {' '.join(args[:3])} failed in {git_dir}: {proc.stderr.strip()[:500]}",
            fix="see git's message above", code=EXIT_DENIED,
        )
    return proc


class HostGit:
    """A workspace's git, verified to be the user's own (see :func:`verify`)."""

    def __init__(self, workspace: Path, git_dir: Path, common_dir: Path) -> None:
        self.workspace = workspace
        self.git_dir = git_dir  # HEAD and index of this worktree
        self.common_dir = common_dir  # objects, refs, config of the repository

    @property
    def linked(self) -> bool:
        """A linked worktree (its ``.git`` is a pointer file to the main repository)."""
        return self.git_dir != self.common_dir

    @property
    def objects(self) -> Path:
        return self.common_dir / "objects"

    def git(self, *args: str, check: bool = True, environ: Mapping[str, str] = os.environ,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.git_dir, *args, work_tree=self.workspace, check=check,
                   environ=environ, input_text=input_text)

    def __repr__(self) -> str:
        return f"HostGit({self.workspace}, {self.git_dir}, {self.common_dir})"


def _refuse(path: Path, why: str, fix: str) -> IsofeatError:
    return IsofeatError(f"{path}: {why}", fix=fix)


def _own_dir(path: Path, what: str) -> None:
    """``path`` is a real folder (not a link) that the current user owns."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _refuse(path, f"{what} does not exist",
                      "run `git worktree repair` in the main repository") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, f"{what} is not a plain folder (a link or a file)",
                      "replace it with the repository's real git folder")
    if st.st_uid != os.getuid():
        raise _refuse(path, f"{what} belongs to uid {st.st_uid}, not to you "
                      f"(uid {os.getuid()}): the sandbox or another user made it",
                      f"inspect it; if it is yours, `chown -R $USER {path}`")


def _read_small(path: Path, limit: int = _MAX_REF_FILE) -> str:
    """A small text file, without following a link at its last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(f"{path}: larger than {limit} bytes")
    return data.decode("utf-8", "strict")


def verify(workspace: Path) -> HostGit | None:
    """The workspace's git, if it has one that is the user's own; refuses anything else.

    Refused (exit 2, with the reason): a ``.git`` that is a link or belongs to another uid;
    a main repository with a ``commondir`` file; a ``gitdir:`` pointer that is not the path the
    main repository lists for this worktree. Nothing is followed before it is checked.
    """
    dot = workspace / ".git"
    try:
        st = os.lstat(dot)
    except FileNotFoundError:
        return None
    fix_own = f"inspect {dot}; if you made it, `chown -R $USER {dot}`; else remove it"
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(dot, "is a symbolic link", f"replace it with the real git folder ({fix_own})")
    if st.st_uid != os.getuid():
        raise _refuse(dot, f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): "
                      "the sandbox or another user made it", fix_own)
    if stat.S_ISDIR(st.st_mode):
        _no_commondir(dot)
        return HostGit(workspace, dot, dot)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(dot, "is neither a folder nor a worktree pointer file", fix_own)
    try:
        text = _read_small(dot).strip()
    except (OSError, UnicodeDecodeError) as err:
        raise _refuse(dot, f"cannot read the worktree pointer: {err}",
                      "run `git worktree repair` in the main repository") from None
    if not text.startswith("gitdir:") or "\n" in text:
        raise _refuse(dot, "is not a git worktree pointer (`gitdir: PATH`)",
                      "run `git worktree repair` in the main repository")
    target = Path(text.split(":", 1)[1].strip())
    gitdir = Path(os.path.realpath(target if target.is_absolute() else workspace / target))
    main_git = gitdir.parent.parent
    fix_repair = "run `git worktree repair` in the main repository, or remove this worktree"
    if gitdir.parent.name != "worktrees":
        raise _refuse(dot, f"points at {gitdir}, which is not a worktree record of a main "
                      "repository (<repo>/.git/worktrees/<name>)", fix_repair)
    _own_dir(main_git, "the main repository's git folder")
    _no_commondir(main_git)
    _own_dir(gitdir, "the worktree's record")
    try:
        listed = _read_small(gitdir / "gitdir").strip()
        common = _read_small(gitdir / "commondir").strip()
    except (OSError, UnicodeDecodeError):
        raise _refuse(gitdir, "is not a complete worktree record", fix_repair) from None
    if os.path.realpath(listed) != os.path.realpath(dot):
        raise _refuse(dot, f"points at {gitdir}, but the main repository lists that record "
                      f"for {listed}, not for this worktree", fix_repair)
    if os.path.realpath(gitdir / common) != str(main_git):
        raise _refuse(gitdir, "names another repository in its commondir", fix_repair)
    return HostGit(workspace, gitdir, main_git)


def _no_commondir(git_dir: Path) -> None:
    if os.path.lexists(git_dir / "commondir"):
        raise _refuse(git_dir / "commondir", "exists in a main repository: git would take "
                      "objects, refs, config and hooks from the folder it names",
                      f"inspect it; remove it if you did not make it ({git_dir}/commondir)")


# --- the agent's git ------------------------------------------------------------------------


def pointer_text() -> str:
    """The ``.git`` file mounted over a worktree's pointer: it leads to the agent's git."""
    return f"gitdir: {AGENT_GIT_TARGET}\n"


def create_agent_git(host: HostGit, dest: Path, gid: int) -> bool:
    """Make the agent's git at ``dest`` from the user's, once. False when it already exists.

    Built in a temporary folder beside ``dest`` and renamed into place, so a killed run
    leaves no half-made repository. The host runs git only while it alone owns the folder.
    """
    from isofeat.atomic import remove_leftovers

    # A run killed before the rename below left its half-made copy (named by its pid). This
    # runs on every open, not only the first: the killed run's git children live on for a
    # moment and may create that copy after the next run has already made ``dest``.
    remove_leftovers(dest.parent, f".{dest.name}.tmp-", suffix="")
    if os.path.lexists(dest):
        return False
    import shutil  # only on a first open: a warm init never gets here

    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    run(tmp, "init", "-q", "--bare", "--template=", check=True)
    for key, value in (("core.bare", "false"), ("core.sharedRepository", "group"),
                       ("core.logAllRefUpdates", "true"), ("user.name", AGENT_NAME),
                       ("user.email", AGENT_EMAIL)):
        run(tmp, "config", key, value)
    alternates = tmp / "objects" / "info" / "alternates"
    alternates.parent.mkdir(parents=True, exist_ok=True)
    # The host's path first, so that update-ref below can check each object exists.
    alternates.write_text(f"{host.objects}\n", encoding="utf-8")
    refs = host.git("for-each-ref", "--format=%(objectname) %(refname)",
                    "refs/heads", "refs/tags").stdout
    lines = [f"create {name} {sha}" for sha, name in
             (line.split(" ", 1) for line in refs.splitlines() if line)]
    if lines:
        run(tmp, "update-ref", "--stdin", input_text="\n".join(lines) + "\n")
    head = host.git("symbolic-ref", "-q", "HEAD", check=False)
    if head.returncode == 0:
        run(tmp, "symbolic-ref", "HEAD", head.stdout.strip())
    else:  # a detached HEAD
        sha = host.git("rev-parse", "--verify", "HEAD").stdout.strip()
        (tmp / "HEAD").write_text(f"{sha}\n", encoding="ascii")
    index = host.git_dir / "index"
    if index.is_file() and not index.is_symlink():
        # The user's index has the worktree's stat data, which is the same inside the
        # container (same inodes and times): the agent's first `git status` need not hash
        # every file again.
        shutil.copyfile(index, tmp / "index")
    for extra in ("shallow", "info/exclude"):  # what git reads besides objects and refs
        src = host.common_dir / extra
        if src.is_file() and not src.is_symlink():
            (tmp / extra).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / extra)
    alternates.write_text(f"{OBJECTS_TARGET}\n", encoding="utf-8")
    _share_tree(tmp, gid)
    os.rename(tmp, dest)
    return True


def _share_tree(root: Path, gid: int) -> None:
    """Group ``gid`` may write the new repository (git's sharedRepository=group layout)."""
    try:
        for _folder, _dirs, files, dir_fd in os.fwalk(root):
            os.chown(dir_fd, -1, gid)
            # Group rwx + setgid for the sandbox group only; no world bits.
            os.chmod(dir_fd, 0o2770)  # noqa: S103
            for name in files:
                os.chown(name, -1, gid, dir_fd=dir_fd, follow_symlinks=False)
                mode = stat.S_IMODE(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
                os.chmod(name, (mode | 0o060) & 0o2770, dir_fd=dir_fd)
    except PermissionError as err:
        raise IsofeatError(
            f"{root}: cannot give the agent's git to the sandbox group {gid}: {err.strerror}",
            fix=f"add your user to group {gid} (sudo groupadd -g {gid} dev; "
                "sudo usermod -aG dev $USER; log in again)",
        ) from None


def _open_dir(parent_fd: int, name: str) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)


def _read_at(dir_fd: int, name: str, limit: int) -> bytes | None:
    """A regular file's bytes, or None for anything else (links, FIFOs, folders, too big)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def read_agent_refs(agent_git: Path) -> dict[str, str]:
    """The agent's branches and tags as ``{refname: sha}``, read as data.

    Loose refs win over ``packed-refs``, as in git. Names and values that git itself would not
    write (odd characters, no 40/64-hex value, links, oversized files) are left out.
    """
    refs: dict[str, str] = {}
    try:
        root = os.open(agent_git, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return refs
    try:
        packed = _read_at(root, "packed-refs", _MAX_PACKED_REFS)
        for line in (packed or b"").decode("utf-8", "replace").splitlines():
            sha, _, name = line.partition(" ")
            if re.fullmatch(_HEX, sha) and re.fullmatch(_REFNAME, name):
                refs[name] = sha
        try:
            refs_fd = _open_dir(root, "refs")
        except OSError:
            return refs
        try:
            for top in ("heads", "tags"):
                _walk_loose_refs(refs_fd, top, f"refs/{top}", refs, depth=0)
        finally:
            os.close(refs_fd)
    finally:
        os.close(root)
    return refs


def _walk_loose_refs(parent_fd: int, name: str, prefix: str, refs: dict[str, str],
                     depth: int) -> None:
    if depth > 16:
        return
    try:
        fd = _open_dir(parent_fd, name)
    except OSError:
        return
    try:
        for entry in sorted(os.listdir(fd)):
            full = f"{prefix}/{entry}"
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _walk_loose_refs(fd, entry, full, refs, depth + 1)
            elif stat.S_ISREG(st.st_mode) and re.fullmatch(_REFNAME, full):
                data = _read_at(fd, entry, 128)
                sha = (data or b"").decode("ascii", "replace").strip()
                if re.fullmatch(_HEX, sha):
                    refs[full] = sha
    finally:
        os.close(fd)


def _copy_objects(agent_git: Path, dest_objects: Path, max_bytes: int) -> int:
    """Copy the agent's loose objects and packs (regular files only) into ``dest_objects``."""
    total = 0

    def take(dir_fd: int, name: str, out: Path) -> None:
        nonlocal total
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return
        with os.fdopen(fd, "rb") as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                return
            total += st.st_size
            if total > max_bytes:
                raise IsofeatError(
                    f"the sandbox's git holds more than {max_bytes} bytes of new objects",
                    fix="repack or trim the task's history, or raise ISOFEAT_IMPORT_MAX_BYTES",
                )
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)

    try:
        root = os.open(agent_git, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        objects = _open_dir(root, "objects")
    except OSError:
        os.close(root)
        return 0
    try:
        for sub in sorted(os.listdir(objects)):
            # Packs, and loose objects in their two-hex-digit folders; nothing else (info/
            # alternates above all) is ever read.
            loose = re.fullmatch(_LOOSE[0], sub)
            pattern = _PACK if sub == "pack" else _LOOSE[1] if loose else None
            if pattern is None:
                continue
            try:
                folder = _open_dir(objects, sub)
            except OSError:
                continue
            try:
                for name in sorted(os.listdir(folder)):
                    if re.fullmatch(pattern, name):
                        take(folder, name, dest_objects / sub / name)
            finally:
                os.close(folder)
    finally:
        os.close(objects)
        os.close(root)
    return total


def import_refs(
    host: HostGit, agent_git: Path, wanted: Mapping[str, str], scratch: Path,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """Bring agent refs into the user's repository: ``{agent ref: destination ref}``.

    Returns ``{destination ref: sha}`` for the refs that exist in the agent's git. The
    objects pass git's fsck on the way in; nothing of the agent's repository is executed,
    followed or trusted beyond being bytes.
    """
    import shutil

    max_bytes = int(environ.get("ISOFEAT_IMPORT_MAX_BYTES") or DEFAULT_MAX_IMPORT)
    refs = read_agent_refs(agent_git)
    found = {dest: refs[src] for src, dest in wanted.items() if src in refs}
    if not found:
        return {}
    tmp = scratch / f"import-{os.getpid()}"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    try:
        run(tmp, "init", "-q", "--bare", "--template=")
        info = tmp / "objects" / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "alternates").write_text(f"{host.objects}\n", encoding="utf-8")
        _copy_objects(agent_git, tmp / "objects", max_bytes)
        updates = [f"update refs/import/{i} {found[dest]}" for i, dest in enumerate(sorted(found))]
        ok = run(tmp, "update-ref", "--stdin", input_text="\n".join(updates) + "\n",
                 check=False)
        if ok.returncode != 0:
            raise IsofeatError(
                "the sandbox's git names commits whose objects are missing or damaged: "
                f"{ok.stderr.strip()[:300]}",
                fix="inside the sandbox, run `git fsck` and `git gc`; then try again",
            )
        specs = [f"+refs/import/{i}:{dest}" for i, dest in enumerate(sorted(found))]
        host.git("-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
                 "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(tmp), *specs,
                 environ=environ)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


# --- paths that host tools act on ------------------------------------------------------------

#: Folders at the top of the repository whose files an IDE, a shell hook, an agent on the host
#: or CI acts on by itself.
HOST_TOOL_DIRS = (
    ".devcontainer/", ".vscode/", ".idea/", ".fleet/", ".zed/", ".husky/", ".githooks/",
    ".git-hooks/", ".claude/", ".codex/", ".gemini/", ".cursor/", ".mise/", ".direnv/",
    ".github/workflows/", ".github/actions/", ".circleci/", ".buildkite/",
)
#: File names, at any depth, that tools load when they enter the folder.
HOST_TOOL_NAMES = (
    ".gitattributes", ".envrc", ".env", ".tool-versions", ".mise.toml", "mise.toml",
    ".mise.local.toml", ".lefthook.yml", "lefthook.yml", ".lefthook.yaml", "lefthook.yaml",
    ".pre-commit-config.yaml", ".pre-commit-hooks.yaml", ".gitmodules",
    ".devcontainer.json", ".mcp.json", ".gitlab-ci.yml", ".travis.yml", "azure-pipelines.yml",
)
_HOST_TOOL_SUFFIXES = (".code-workspace",)


def host_tool_paths(paths: Iterable[str]) -> list[str]:
    """The paths among ``paths`` that a host tool would act on by itself (sorted)."""
    hits = []
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if (path.startswith(HOST_TOOL_DIRS) or name in HOST_TOOL_NAMES
                or name.endswith(_HOST_TOOL_SUFFIXES)):
            hits.append(path)
    return sorted(hits)


def changed_paths(host: HostGit, base: str, tip: str) -> list[str]:
    out = host.git("diff", "--no-renames", "--name-only", "-z", f"{base}...{tip}", "--").stdout
    return [p for p in out.split("\0") if p]


def devcontainer_tree(host: HostGit, rev: str) -> str:
    """The git tree id of ``.devcontainer/`` at ``rev`` ("none" when it has none)."""
    proc = host.git("rev-parse", "--verify", "--quiet", f"{rev}:.devcontainer", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "none"
