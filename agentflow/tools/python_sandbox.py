"""The `python` tool: run model-written code in a separate, limited process.

Small models write code that loops forever, allocates without bound, forks,
prints megabytes or reaches for the network; none of that may hurt the agent
process or the host. Each run gets resource limits, a scrubbed environment,
and, through bubblewrap (sandbox_namespaces.py), its own user, mount, PID,
network and IPC namespaces: a read-only view of the interpreter and system
libraries, a private tmpfs as /tmp and working folder, the unprivileged uid
`nobody`, and an init that takes every descendant down when the code ends.
Where the kernel or the container refuses namespaces, the older launcher
below runs the code with what is left, and `sandbox_warning()` says so.
What is and is not protected is written down in docs/sandbox.md.

Neither launcher uses a `preexec_fn`: the agent runs tools from thread
pools, and running Python code between fork and exec in a threaded parent can
deadlock. The setup happens in the executed launcher instead.
"""

from __future__ import annotations

import ast
import functools
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field

from agentflow.tools.cards import card_metadata
from agentflow.tools.contract import reported_as_tool_failure
from agentflow.tools.sandbox_namespaces import (
    NOBODY,
    SANDBOX_TMP,
    bwrap_command,
    child_python_path,
    site_dirs,
)

MiB = 1024 * 1024

#: Set to "0" to skip the namespace launcher and use the fallback one (to
#: measure what the namespaces cost, or where bwrap misbehaves).
NAMESPACES_ENV = "AGENTFLOW_SANDBOX_NAMESPACES"

#: What a run can be protected by, as reported by `sandbox_protections()`.
PROTECTIONS = ("network_isolated", "filesystem_isolated", "processes_contained", "uid_dropped")

_PROTECTION_LABELS = {
    "network_isolated": "network isolation",
    "filesystem_isolated": "a private read-only filesystem view",
    "processes_contained": "a PID namespace",
    "uid_dropped": "the switch to uid nobody",
}

#: The accounts the sandbox's /etc/passwd and /etc/group list: just enough for
#: `pwd.getpwuid(os.getuid())`, nothing about the machine's users.
_PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"nobody:x:{NOBODY}:{NOBODY}:nobody:{SANDBOX_TMP}:/usr/sbin/nologin\n"
)
_GROUP = f"root:x:0:\nnogroup:x:{NOBODY}:\n"

#: The fallback launcher, for machines that refuse namespaces: executed by the
#: child before the user's code to isolate what it can, limit, drop root, exec.
#: argv: status_fd uid gid limits interpreter [interpreter args...], where
#: limits is "resource:soft:hard,..." It reports on status_fd which
#: protections took effect: N = own network namespace, U = unprivileged uid.
_LAUNCHER = r"""
import ctypes, os, resource, sys
status_fd, uid, gid = map(int, sys.argv[1:4])
command = sys.argv[5:]
flags = ""
CLONE_NEWNET = 0x40000000
unshare = getattr(ctypes.CDLL(None, use_errno=True), "unshare", None)  # Linux only
if unshare is not None and unshare(CLONE_NEWNET) == 0:
    flags += "N"
for item in sys.argv[4].split(","):
    limit, soft, hard = map(int, item.split(":"))
    resource.setrlimit(limit, (soft, hard))
if uid >= 0:
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        flags += "U"
    except PermissionError:
        pass
os.write(status_fd, flags.encode())
os.close(status_fd)
os.execv(command[0], command)
"""

#: The only environment the child sees; nothing (API keys included) is inherited.
_BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONIOENCODING": "utf-8",
    # numerical libraries otherwise start one thread per core, each counted
    # against RLIMIT_NPROC and the address-space cap
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run."""

    timeout_s: float = 10.0
    memory_bytes: int = 512 * MiB
    max_processes: int = 64
    max_file_bytes: int = 16 * MiB
    max_output_bytes: int = 64 * 1024
    #: size of each private tmpfs (/tmp, which is the working folder, and
    #: /dev/shm): files there live in memory, which RLIMIT_AS does not count
    tmpfs_bytes: int = 64 * MiB

    @property
    def cpu_seconds(self) -> int:
        """CPU-time cap: a backstop for processes that escape the group kill."""
        return int(self.timeout_s) + 2


@dataclass
class SandboxResult:
    """What one run produced and which protections were in force."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool = False
    output_truncated: bool = False
    network_isolated: bool = False
    filesystem_isolated: bool = False
    processes_contained: bool = False
    uid_dropped: bool = False
    duration_s: float = 0.0


def add_expression_echo(code: str) -> str:
    """Make a final bare expression print its value, as a REPL would.

    Small models write `12345 * 6789` and expect to see the number. Code that
    does not parse is returned unchanged so the child reports the SyntaxError.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    lines = code.splitlines(keepends=True)
    before = "".join(lines[: last.lineno - 1]) + lines[last.lineno - 1][: last.col_offset]
    expression = ast.get_source_segment(code, last.value)
    if expression is None:
        return code
    return (
        f"{before}__value__ = ({expression})\n"
        "if __value__ is not None:\n"
        "    print(__value__)\n"
    )


def run_sandboxed(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` as a script in a fresh limited process and collect its output.

    Uses the namespace launcher when this machine allows it, else the
    fallback launcher; the result records which protections were in force.
    """
    return _run(add_expression_echo(code), limits or SandboxLimits(), namespaced=_namespace_refusal() is None)


def _run(script: str, limits: SandboxLimits, namespaced: bool) -> SandboxResult:
    """Run an already echo-rewritten script with the chosen launcher."""
    return _run_namespaced(script, limits) if namespaced else _run_fallback(script, limits)


def _run_namespaced(script: str, limits: SandboxLimits) -> SandboxResult:
    """Run `script` under bwrap (sandbox_namespaces.py): every protection, or a bwrap error."""
    with _namespaced_launch(script, limits) as (command, env, fds):
        result = _execute(command, env, "/", fds, limits)
    # bwrap's init exits with 128 + N when the code dies of signal N, as shells
    # report it; turn that back into Popen's -N (an explicit exit(128 + N) reads the same)
    if result.returncode is not None and 128 < result.returncode <= 128 + signal.SIGRTMAX:
        result.returncode = 128 - result.returncode
    result.network_isolated = result.filesystem_isolated = result.processes_contained = True
    result.uid_dropped = os.geteuid() == 0
    return result


@contextmanager
def _namespaced_launch(
    script: str, limits: SandboxLimits
) -> Iterator[tuple[list[str], dict[str, str], tuple[int, ...]]]:
    """The bwrap argv, the environment and the fds to pass for one run.

    The script, passwd and group travel as in-memory files that bwrap copies
    into the sandbox, so no host folder is created or shared; they are
    closed when the block ends.
    """
    fds = (_memfd("main.py", script), _memfd("passwd", _PASSWD), _memfd("group", _GROUP))
    try:
        command = bwrap_command(
            as_root=os.geteuid() == 0,
            code_fd=fds[0],
            passwd_fd=fds[1],
            group_fd=fds[2],
            rlimits=[(name, soft, hard) for name, _, soft, hard in _rlimits(limits, limits.max_processes)],
            tmpfs_bytes=limits.tmpfs_bytes,
            command=[sys.executable, "-s", "-B", "main.py"],
        )
        env = {**_BASE_ENV, "HOME": SANDBOX_TMP, "TMPDIR": SANDBOX_TMP}
        python_path = child_python_path()
        if python_path:
            env["PYTHONPATH"] = python_path
        yield command, env, fds
    finally:
        for fd in fds:
            os.close(fd)


def _run_fallback(script: str, limits: SandboxLimits) -> SandboxResult:
    """Run `script` with the fallback launcher, in a temporary folder on the host.

    Used where namespaces are refused: process-group kill, limits, scrubbed
    environment, and whatever of the network namespace and uid switch the
    kernel grants (the launcher reports which on a pipe).
    """
    drop_uid = os.geteuid() == 0
    interpreter, extra_env = _interpreter(drop_uid)
    workdir = tempfile.mkdtemp(prefix="agentflow-sandbox-")
    status_read, status_write = os.pipe()
    try:
        path = os.path.join(workdir, "main.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(script)
        if drop_uid:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(path, NOBODY, NOBODY)
        rlimits = _rlimits(limits, _process_cap(limits.max_processes, drop_uid))
        command = [
            sys.executable, "-I", "-c", _LAUNCHER,
            str(status_write), str(NOBODY if drop_uid else -1), str(NOBODY),
            ",".join(f"{limit}:{soft}:{hard}" for _, limit, soft, hard in rlimits),
            interpreter, "-s", "-B", "main.py",
        ]  # fmt: skip
        env = {**_BASE_ENV, **extra_env, "HOME": workdir, "TMPDIR": workdir}
        result = _execute(command, env, workdir, (status_write,), limits)
        os.close(status_write)
        status_write = -1
        flags = os.read(status_read, 16).decode()
        result.network_isolated = "N" in flags
        result.uid_dropped = "U" in flags
        return result
    finally:
        os.close(status_read)
        if status_write >= 0:
            os.close(status_write)
        shutil.rmtree(workdir, ignore_errors=True)


def _execute(
    command: list[str], env: dict[str, str], cwd: str, pass_fds: tuple[int, ...], limits: SandboxLimits
) -> SandboxResult:
    """Start `command` in its own session and process group and collect it."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        start_new_session=True,
    )
    return _collect(process, limits, started)


def _memfd(name: str, text: str) -> int:
    """An anonymous in-memory file holding `text`, positioned at its start."""
    fd = os.memfd_create(name)
    os.write(fd, text.encode("utf-8"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _rlimits(limits: SandboxLimits, max_processes: int) -> list[tuple[str, int, int, int]]:
    """(prlimit option, resource, soft, hard) for each limit, capped at our own hard limits.

    The limits are set in the child, which inherits our hard limits and
    cannot raise them, so asking for more would fail.
    """
    wanted = [
        ("as", resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        ("cpu", resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),  # SIGXCPU, then SIGKILL
        ("nproc", resource.RLIMIT_NPROC, max_processes, max_processes),
        ("fsize", resource.RLIMIT_FSIZE, limits.max_file_bytes, limits.max_file_bytes),
        ("core", resource.RLIMIT_CORE, 0, 0),
    ]
    capped = []
    for name, limit, soft, hard in wanted:
        ceiling = resource.getrlimit(limit)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        capped.append((name, limit, soft, hard))
    return capped


def _namespace_refusal() -> str | None:
    """Why the namespace launcher cannot be used here, or None when it can."""
    if os.environ.get(NAMESPACES_ENV) == "0":
        return f"namespaces turned off by {NAMESPACES_ENV}=0"
    return _probe_namespaces()


@functools.cache
def _probe_namespaces() -> str | None:
    """Try the namespace launcher once with a no-op; its error line if it fails.

    A container whose seccomp profile forbids unshare(2), a kernel without
    unprivileged user namespaces or a missing bwrap all end here.
    """
    if shutil.which("bwrap", path=_BASE_ENV["PATH"]) is None:
        return "bwrap (bubblewrap) is not installed"
    result = _run_namespaced("pass", SandboxLimits(timeout_s=30.0))
    if result.returncode == 0:
        return None
    return _tail(result.stderr, 1) or f"bwrap exited with status {result.returncode}"


def _collect(process: subprocess.Popen, limits: SandboxLimits, started: float) -> SandboxResult:
    """Read both pipes with byte caps until exit, timeout or too much output.

    stdout keeps its first `max_output_bytes` (the answer is usually printed
    early); stderr keeps its last ones (the traceback is at the end). Whatever
    happens, the launcher's process group is killed before returning. Under
    bwrap that kills bwrap, whose death kills the namespace's init
    (--die-with-parent), and the kernel kills everything in a PID namespace
    whose init dies, so nothing the code started outlives the call; under the
    fallback launcher a process that left the group survives (docs/sandbox.md).
    """
    cap = limits.max_output_bytes
    stdout, stderr = bytearray(), bytearray()
    timed_out = truncated = False
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, stdout)
    selector.register(process.stderr, selectors.EVENT_READ, stderr)
    deadline = started + limits.timeout_s
    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        for key, _ in selector.select(timeout=min(remaining, 0.1)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            buffer = key.data
            buffer += chunk
            if buffer is stderr:
                del buffer[:-cap]
            elif len(buffer) > cap:
                del buffer[cap:]
                truncated = True
        if truncated:
            break
        # the main process exited but a descendant may still hold the pipes open
        if process.poll() is not None and not selector.select(timeout=0):
            break
    selector.close()
    _kill_group(process.pid)
    returncode = process.wait()
    process.stdout.close()
    process.stderr.close()
    return SandboxResult(
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        returncode=returncode,
        timed_out=timed_out,
        output_truncated=truncated,
        duration_s=time.monotonic() - started,
    )


def _kill_group(pgid: int) -> None:
    """SIGKILL every process in the run's process group (session leader's pid)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _process_cap(max_processes: int, drop_uid: bool) -> int:
    """RLIMIT_NPROC value: it counts every task of the real uid, not just ours.

    As `nobody` the count starts near zero. Without the uid switch the user's
    existing processes count too, so the cap is added on top of them.
    """
    if drop_uid:
        return max_processes
    uid = os.getuid()
    existing = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    existing += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return existing + max_processes


@functools.cache
def _interpreter(drop_uid: bool) -> tuple[str, dict[str, str]]:
    """Pick a Python the child can execute, and the env that gives it our packages.

    As root the child runs as `nobody`, which cannot read an interpreter kept
    under /root (pyenv's default). A same-version system Python is used then,
    with the parent's site-packages on PYTHONPATH when `nobody` can read them.
    """
    if not drop_uid:
        return sys.executable, {}
    candidates = [sys.executable]
    system_python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path=_BASE_ENV["PATH"])
    if system_python:
        candidates.append(system_python)
    for candidate in candidates:
        if _runs_as_nobody(candidate):
            if candidate == sys.executable:
                return candidate, {}
            readable = [
                path for path in site_dirs() if _runs_as_nobody(candidate, f"import os; os.listdir({path!r})")
            ]
            return candidate, {"PYTHONPATH": os.pathsep.join(readable)} if readable else {}
    return sys.executable, {}


def _runs_as_nobody(interpreter: str, code: str = "pass") -> bool:
    """Whether `interpreter -c code` succeeds under the unprivileged uid."""
    try:
        completed = subprocess.run(
            [interpreter, "-I", "-c", code],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            env=_BASE_ENV,
            cwd="/",
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return completed.returncode == 0


def sandbox_protections() -> dict[str, bool]:
    """Which protections a run gets on this machine (keys: PROTECTIONS).

    Probed once per launcher with a no-op run. `uid_dropped` is True only
    when the agent runs as root; for another user the namespaces map it to
    `nobody` inside, but its real uid stays its own.
    """
    return _protections(_namespace_refusal() is None)


@functools.cache
def _protections(namespaced: bool) -> dict[str, bool]:
    result = _run("pass", SandboxLimits(timeout_s=30.0), namespaced)
    return {name: getattr(result, name) for name in PROTECTIONS}


def sandbox_warning() -> str | None:
    """One line for stderr when this machine denies the sandbox a protection, else None.

    The uid switch counts only for root: no other user can switch uid, and
    the namespaces already keep its files out of reach.
    """
    protections = sandbox_protections()
    missing = [
        name for name in PROTECTIONS if not protections[name] and (name != "uid_dropped" or os.geteuid() == 0)
    ]
    if not missing:
        return None
    reason = _namespace_refusal()
    because = f" ({reason})" if reason else ""
    labels = ", ".join(_PROTECTION_LABELS[name] for name in missing)
    return f"the python tool's sandbox runs without {labels}{because}; see docs/sandbox.md"


class PythonInput(BaseModel):
    """Arguments of the `python` tool."""

    code: str = Field(description="Python 3 code to run; print() what you need. A final bare expression is printed.")


class PythonSandboxTool(BaseTool):
    """Runs Python code in the sandbox; failures raise ToolException for the executor to record."""

    name: str = "python"
    description: str = (
        "Run Python 3 code and return what it prints. Use it for calculations, "
        "loops, counting and checking answers. Standard library only; no internet, no files kept."
    )
    args_schema: type[BaseModel] = PythonInput
    limits: SandboxLimits = Field(default_factory=SandboxLimits)
    metadata: dict = card_metadata(
        examples=[{"code": "print(sum(i * i for i in range(1, 11)))"}],
        limitations=[
            "No internet access and no files survive between calls.",
            "Each call starts fresh: variables are not kept from earlier calls.",
            "Stopped after the time limit; output is cut at 64 KiB.",
        ],
        best_practices=["print() every value you need; write the whole computation in one call."],
    )

    @property
    def network_isolated(self) -> bool:
        """True when code runs in its own network namespace (no network at all)."""
        return sandbox_protections()["network_isolated"]

    @property
    def filesystem_protected(self) -> bool:
        """True when code cannot change the machine's files: it sees a private
        read-only view or, failing that, runs as an unprivileged uid."""
        protections = sandbox_protections()
        return protections["filesystem_isolated"] or protections["uid_dropped"]

    def _run(self, code: str) -> str:
        with reported_as_tool_failure(self.name):  # e.g. OSError starting the process
            result = run_sandboxed(code, self.limits)
        return format_result(result, self.limits)


def format_result(result: SandboxResult, limits: SandboxLimits) -> str:
    """Turn a run into the tool's text, or raise ToolException with a clear reason."""
    stdout = result.stdout.rstrip()
    stderr_tail = _tail(result.stderr)
    if result.timed_out:
        partial = f"\nOutput before the timeout:\n{_tail(stdout)}" if stdout else ""
        raise ToolException(
            f"Python code timed out after {limits.timeout_s:g}s; the process and its children were killed.{partial}"
        )
    if result.output_truncated:
        return f"{stdout}\n[output truncated: more than {limits.max_output_bytes // 1024} KiB printed, program stopped]"
    if result.returncode != 0:
        last_line = stderr_tail.splitlines()[-1] if stderr_tail else ""
        if "MemoryError" in last_line:
            raise ToolException(
                f"Python code failed: memory limit exceeded ({limits.memory_bytes // MiB} MiB).\n{stderr_tail}"
            )
        if result.returncode is not None and result.returncode < 0:
            raise ToolException(f"Python code was killed by {_signal_name(-result.returncode)}.\n{stderr_tail}".rstrip())
        raise ToolException(f"Python code failed with exit code {result.returncode}:\n{stderr_tail}".rstrip())
    if result.stderr.strip():
        stdout = f"{stdout}\n[stderr]\n{stderr_tail}".lstrip("\n")
    return stdout or "(no output; use print() to show values)"


def _tail(text: str, lines: int = 20) -> str:
    """The last few lines: the part of a traceback that names the error."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _signal_name(number: int) -> str:
    """Readable signal name, with the limit it usually means."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    reasons = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed)", "SIGSEGV": " (crash, e.g. stack overflow)"}
    return name + reasons.get(name, "")
