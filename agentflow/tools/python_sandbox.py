"""The `python` tool: run model-written code in a separate, limited process.

Small models write code that loops forever, allocates without bound, forks,
prints megabytes or reaches for the network; none of that may hurt the agent
process or the host. Each run gets its own process group, resource limits, an
empty temporary working directory, a scrubbed environment and, where the
kernel allows, its own network namespace and an unprivileged uid. What is and
is not protected is written down in docs/sandbox.md.

The privileged setup (unshare, setrlimit, setuid) happens in a tiny launcher
program executed in the child, not in a `preexec_fn`: the agent runs tools
from thread pools, and running Python code between fork and exec in a
threaded parent can deadlock.
"""

from __future__ import annotations

import ast
import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from langchain_core.callbacks import CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field

MiB = 1024 * 1024

#: The unprivileged uid/gid the child switches to when the agent runs as root.
NOBODY = 65534

#: Executed by the child before the user's code: isolate, limit, drop root, exec.
#: argv: status_fd uid gid memory cpu nproc fsize interpreter [interpreter args...]
#: It reports on status_fd which protections took effect: N = own network
#: namespace, U = unprivileged uid.
_LAUNCHER = r"""
import ctypes, os, resource, sys
status_fd, uid, gid, memory, cpu, nproc, fsize = map(int, sys.argv[1:8])
command = sys.argv[8:]
flags = ""
CLONE_NEWNET = 0x40000000
unshare = getattr(ctypes.CDLL(None, use_errno=True), "unshare", None)  # Linux only
if unshare is not None and unshare(CLONE_NEWNET) == 0:
    flags += "N"
for limit, soft, hard in (
    (resource.RLIMIT_AS, memory, memory),
    (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at soft, SIGKILL at hard
    (resource.RLIMIT_NPROC, nproc, nproc),
    (resource.RLIMIT_FSIZE, fsize, fsize),
    (resource.RLIMIT_CORE, 0, 0),
):
    ceiling = resource.getrlimit(limit)[1]
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
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
    """Run `code` as a script in a fresh limited process and collect its output."""
    limits = limits or SandboxLimits()
    drop_uid = os.geteuid() == 0
    interpreter, extra_env = _interpreter(drop_uid)
    workdir = tempfile.mkdtemp(prefix="agentflow-sandbox-")
    status_read, status_write = os.pipe()
    try:
        script = os.path.join(workdir, "main.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(add_expression_echo(code))
        if drop_uid:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(script, NOBODY, NOBODY)
        command = [
            sys.executable, "-I", "-c", _LAUNCHER,
            str(status_write),
            str(NOBODY if drop_uid else -1), str(NOBODY),
            str(limits.memory_bytes), str(limits.cpu_seconds),
            str(_process_cap(limits.max_processes, drop_uid)),
            str(limits.max_file_bytes),
            interpreter, "-s", "-B", "main.py",
        ]  # fmt: skip
        env = {**_BASE_ENV, **extra_env, "HOME": workdir, "TMPDIR": workdir}
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_write,),
            start_new_session=True,
        )
        os.close(status_write)
        status_write = -1
        result = _collect(process, limits, started)
        flags = os.read(status_read, 16).decode()
        result.network_isolated = "N" in flags
        result.uid_dropped = "U" in flags
        return result
    finally:
        os.close(status_read)
        if status_write >= 0:
            os.close(status_write)
        shutil.rmtree(workdir, ignore_errors=True)


def _collect(process: subprocess.Popen, limits: SandboxLimits, started: float) -> SandboxResult:
    """Read both pipes with byte caps until exit, timeout or too much output.

    stdout keeps its first `max_output_bytes` (the answer is usually printed
    early); stderr keeps its last ones (the traceback is at the end). Whatever
    happens, the whole process group is killed before returning, so nothing
    the code started outlives the call.
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
                path for path in _site_packages() if _runs_as_nobody(candidate, f"import os; os.listdir({path!r})")
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


def _site_packages() -> list[str]:
    """The parent's site-packages directories."""
    return [path for path in sys.path if path.endswith("site-packages") and os.path.isdir(path)]


@functools.cache
def sandbox_protections() -> dict[str, bool]:
    """Which protections this machine grants the sandbox, probed once with a no-op run."""
    result = run_sandboxed("pass", SandboxLimits(timeout_s=30.0))
    return {"network_isolated": result.network_isolated, "uid_dropped": result.uid_dropped}


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
    metadata: dict = Field(
        default_factory=lambda: {
            "examples": [{"code": "print(sum(i * i for i in range(1, 11)))"}],
            "limitations": [
                "No internet access and no files survive between calls.",
                "Each call starts fresh: variables are not kept from earlier calls.",
                "Stopped after the time limit; output is cut at 64 KiB.",
            ],
            "best_practices": ["print() every value you need; write the whole computation in one call."],
            "output_type": "str",
        }
    )

    @property
    def network_isolated(self) -> bool:
        """True when code runs in its own network namespace (no network at all)."""
        return sandbox_protections()["network_isolated"]

    @property
    def filesystem_protected(self) -> bool:
        """True when code runs as an unprivileged uid, so files outside its temp dir are safe."""
        return sandbox_protections()["uid_dropped"]

    def _run(self, code: str, run_manager: CallbackManagerForToolRun | None = None) -> str:
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
