"""The `python` sandbox's namespace launcher: a bubblewrap (`bwrap`) command line.

Why bubblewrap rather than our own launcher: the sandbox needs a user, mount,
PID, network and IPC namespace, a read-only view assembled from bind mounts,
fresh tmpfs and procfs mounts, a pivot_root and an init that reaps and takes
every descendant down with it. bwrap does exactly that, is small, packaged by
every distribution (Debian: `bubblewrap`) and audited as Flatpak's sandbox;
util-linux `unshare` makes namespaces but cannot assemble a root from bind
mounts, and a ctypes launcher would re-implement bwrap's mount sequence in
Python. It is also cheaper: a Python launcher pays a second interpreter
start-up per call, bwrap is a C program (benchmarks/sandbox_overhead.py).

Only argv is built here; python_sandbox.py runs it. What the child sees and
why is in docs/sandbox.md.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Sequence

#: The unprivileged uid/gid the sandboxed code runs as (`nobody`).
NOBODY = 65534

#: Where the code's private tmpfs is mounted; also its working folder and HOME.
SANDBOX_TMP = "/tmp"

#: Top-level system folders: bound read-only, or re-created as the same
#: symlinks on merged-/usr systems (where /bin -> usr/bin).
_SYSTEM_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

#: The /etc files the interpreter and the C library read (dynamic linker
#: cache, time zone, name-service switch for `localhost`, Debian's command
#: alternatives); the rest of /etc is not there. passwd and group are
#: written by the caller, so the machine's accounts stay hidden.
_ETC_FILES = ("alternatives", "hosts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf")


def bwrap_command(
    *,
    as_root: bool,
    code_fd: int,
    passwd_fd: int,
    group_fd: int,
    rlimits: Sequence[tuple[str, int, int]],
    tmpfs_bytes: int,
    command: Sequence[str],
) -> list[str]:
    """argv that runs `command` as `nobody` in fresh namespaces, with `rlimits` set.

    `code_fd` is copied to SANDBOX_TMP/main.py and `passwd_fd` / `group_fd` to
    /etc; `rlimits` are (prlimit option, soft, hard), already capped at the
    caller's own hard limits.

    As root, bwrap needs no user namespace: it builds the mounts with root's
    capabilities, so it can bind an interpreter kept under a private home
    (pyenv's /root/.pyenv), then setpriv drops to `nobody` with no
    capabilities inside. As another user, a user namespace gives bwrap the
    right to build them, and maps that user to `nobody` inside; bwrap itself
    drops every capability before the command starts.

    prlimit runs inside the namespaces, so in a user namespace RLIMIT_NPROC
    counts only this run's processes, not all of the user's.
    """
    # The caller starts bwrap in a new session and process group: no terminal is reachable (hence
    # no --new-session) and its group kill reaches the namespace's init. --die-with-parent: if the
    # agent dies mid-call (OOM killer, kill -9), bwrap and the namespace die with it.
    args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent"]
    if not as_root:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    for root in _SYSTEM_ROOTS:
        if os.path.islink(root):
            args += ["--symlink", os.readlink(root), root]
        elif os.path.isdir(root):
            args += ["--ro-bind", root, root]
    args += ["--proc", "/proc", "--dev", "/dev"]
    # private, size-capped and world-writable (as root the tmpfs belongs to root)
    for tmpfs in (SANDBOX_TMP, "/dev/shm"):
        args += ["--perms", "1777", "--size", str(tmpfs_bytes), "--tmpfs", tmpfs]
    binds = interpreter_paths()
    # bwrap would create missing parents mode 0700, which `nobody` cannot cross; /tmp is the tmpfs
    made = {SANDBOX_TMP}
    for folder in ["/etc", *(parent for path in binds for parent in _parents(path))]:
        if folder not in made:
            args += ["--perms", "0755", "--dir", folder]
            made.add(folder)
    for path in binds:
        args += ["--ro-bind", path, path]
    for name in _ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--perms", "0644", "--ro-bind-data", str(passwd_fd), "/etc/passwd"]
    args += ["--perms", "0644", "--ro-bind-data", str(group_fd), "/etc/group"]
    args += ["--perms", "0644", "--file", str(code_fd), f"{SANDBOX_TMP}/main.py"]
    # last: the root and /dev tmpfs would otherwise be writable (and unbounded)
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SANDBOX_TMP, "--"]
    if as_root:
        args += ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    args += ["prlimit", *(f"--{name}={soft}:{hard}" for name, soft, hard in rlimits), "--"]
    return args + list(command)


def interpreter_paths() -> list[str]:
    """The folders (and file) the running interpreter needs, outside the system folders.

    The prefixes (a venv's and the Python it was made from), the interpreter
    binary a venv links to, and every site-packages folder on sys.path, so the
    code imports exactly the packages the agent has, wherever they live. A
    path inside another listed path, or under a system folder, is left out:
    it is bound with its parent.
    """
    candidates = {
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        os.path.realpath(sys.executable),
        *site_dirs(),
    }
    paths = sorted(os.path.abspath(path) for path in candidates if os.path.exists(path))
    kept: list[str] = []
    for path in paths:
        covering = [*_SYSTEM_ROOTS, *kept]
        if not any(path == other or path.startswith(other.rstrip("/") + "/") for other in covering):
            kept.append(path)
    return kept


def site_dirs() -> list[str]:
    """The site-packages / dist-packages folders on sys.path, in order."""
    return [
        path
        for path in sys.path
        if os.path.basename(path.rstrip("/")) in ("site-packages", "dist-packages") and os.path.isdir(path)
    ]


def child_python_path() -> str:
    """PYTHONPATH for the child: the site folders the interpreter would not add by itself.

    The child runs the same interpreter, so its own site-packages come back
    without help; folders the agent got from PYTHONPATH or the user site (the
    child runs with -s) are passed on.
    """
    own = set(site.getsitepackages())
    return os.pathsep.join(path for path in site_dirs() if path not in own)


def _parents(path: str) -> list[str]:
    """The folders above `path`, outermost first: /a, /a/b for /a/b/c."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: depth + 1]) for depth in range(len(parts))]
