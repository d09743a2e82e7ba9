"""The `python` tool's sandbox: each test fails if its protection is removed.

Runs real subprocesses in real namespaces with short timeouts; each
protection test carries a positive control showing the sandbox still ran the
code. Namespace tests are skipped only when the kernel refuses namespaces to
this user (checked with util-linux `unshare`, independently of the sandbox).
As root, `test_unprivileged_user_passes_the_same_tests` runs this file again
as an ordinary user, so both launch paths (docs/sandbox.md) are covered by one run.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from langchain_core.tools import ToolException

from agentflow.tools import python_sandbox
from agentflow.tools.python_sandbox import (
    NAMESPACES_ENV,
    NOBODY,
    PROTECTIONS,
    PythonSandboxTool,
    SandboxLimits,
    add_expression_echo,
    run_sandboxed,
    sandbox_protections,
    sandbox_warning,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
IPC_CREAT, IPC_RMID = 0o1000, 0  # <sys/ipc.h>


def _tool(**limits: float) -> PythonSandboxTool:
    return PythonSandboxTool(limits=SandboxLimits(**limits))


@functools.cache
def _kernel_allows_namespaces() -> bool:
    """Whether this user may create the namespaces the sandbox uses (root needs no user namespace)."""
    user = [] if IS_ROOT else ["--user", "--map-root-user"]
    command = ["unshare", *user, "--mount", "--pid", "--net", "--ipc", "--fork", "true"]
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_namespaces = pytest.mark.skipif(
    "not _kernel_allows_namespaces()", reason="the kernel refuses namespaces to this user here"
)


def _marker() -> str:
    return f"agentflow-test-{uuid.uuid4().hex}"


def _sleeper(marker: str) -> str:
    """Python source for the argv of a process that sleeps a minute with `marker` in its command line.

    Host pids mean nothing inside a PID namespace, so the test finds what the
    code started by this marker instead. The interpreter is visible at the
    same path inside the sandbox.
    """
    return repr([sys.executable, "-c", "import time; time.sleep(60)", marker])


def _assert_no_process(marker: str, within_s: float = 3.0) -> None:
    """No live process on the host carries `marker` (a zombie awaiting its reaper counts as gone)."""
    deadline = time.monotonic() + within_s
    while True:
        alive = [
            process.pid
            for process in psutil.process_iter(["cmdline", "status"])
            if marker in (process.info["cmdline"] or []) and process.info["status"] != psutil.STATUS_ZOMBIE
        ]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not alive, f"processes survived the sandbox: {alive}"


def test_prints_value_of_final_expression() -> None:
    assert _tool().invoke({"code": "12345 * 6789"}) == "83810205"
    assert _tool().invoke({"code": "x = 3; x * 2"}) == "6"


def test_expression_echo_leaves_statements_and_none_alone() -> None:
    assert add_expression_echo("x = 1") == "x = 1"
    assert add_expression_echo("not python (") == "not python ("
    assert _tool().invoke({"code": "print('hi')\nNone"}) == "hi"


def test_stdout_and_labelled_stderr_on_success() -> None:
    out = _tool().invoke({"code": "import sys\nprint('answer 42')\nprint('careful', file=sys.stderr)"})
    assert out == "answer 42\n[stderr]\ncareful"


def test_no_output_gets_a_hint() -> None:
    assert "print()" in _tool().invoke({"code": "x = 1"})


def test_error_reports_exit_code_and_traceback_tail() -> None:
    with pytest.raises(ToolException, match=r"exit code 1") as caught:
        _tool().invoke({"code": "def f(:\n  pass"})
    assert "SyntaxError" in str(caught.value)
    with pytest.raises(ToolException, match="ZeroDivisionError"):
        _tool().invoke({"code": "1 / 0"})


def test_death_by_signal_is_named() -> None:
    with pytest.raises(ToolException, match=r"killed by SIGSEGV \(crash"):
        _tool().invoke({"code": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"})


def test_timeout_kills_the_process_and_its_children() -> None:
    marker = _marker()
    code = (
        "import os, subprocess, time\n"
        f"SLEEPER = {_sleeper(marker)}\n"
        "subprocess.Popen(SLEEPER)\n"
        "if os.fork() == 0:\n"
        "    os.execv(SLEEPER[0], SLEEPER)\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(ToolException, match=r"timed out after 2s") as caught:
        _tool(timeout_s=2).invoke({"code": code})
    assert time.monotonic() - started < 6
    assert "started" in str(caught.value)
    _assert_no_process(marker)


def test_children_do_not_outlive_a_normal_exit() -> None:
    marker = _marker()
    code = f"import subprocess\nsubprocess.Popen({_sleeper(marker)})\nprint('started')"
    started = time.monotonic()
    assert _tool(timeout_s=10).invoke({"code": code}) == "started"
    assert time.monotonic() - started < 5
    _assert_no_process(marker)


@needs_namespaces
def test_setsid_and_double_fork_children_die_with_the_run() -> None:
    """Leaving the process group (the fallback launcher's kill) does not escape the PID namespace."""
    marker = _marker()
    code = (
        "import os, subprocess, time\n"
        f"SLEEPER = {_sleeper(marker)}\n"
        "subprocess.Popen(SLEEPER, start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv(SLEEPER[0], SLEEPER)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "def running():\n"
        "    count = 0\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        f"            count += {marker!r}.encode() in open(f'/proc/{{pid}}/cmdline', 'rb').read()\n"
        "        except OSError:\n"
        "            pass\n"
        "    return count\n"
        "deadline = time.monotonic() + 10\n"
        "while running() < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('running', running())\n"
    )
    assert _tool().invoke({"code": code}) == "running 2"
    _assert_no_process(marker)


@needs_namespaces
def test_run_dies_with_the_agent() -> None:
    """An agent killed mid-call (OOM killer, kill -9) takes the sandbox with it.

    A shell stands in for the agent process: it starts the very command a
    run uses and is then killed, as the agent would be.
    """
    marker = _marker()
    code = (
        f"import subprocess, time\nsubprocess.Popen({_sleeper(marker)})\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    with python_sandbox._namespaced_launch(code, SandboxLimits(timeout_s=60)) as (command, env, fds):
        agent = subprocess.Popen(
            ["/bin/sh", "-c", '"$@" & wait', "agent", *command],
            env=env,
            pass_fds=fds,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
    try:
        assert agent.stdout.readline() == b"started\n"
        agent.kill()
        agent.wait()
        _assert_no_process(marker)
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.stdout.close()


def test_memory_bomb_fails_cleanly() -> None:
    with pytest.raises(ToolException, match="memory limit exceeded"):
        _tool().invoke({"code": "block = bytearray(2 * 1024 ** 3)\nprint(len(block))"})
    with pytest.raises(ToolException, match="memory limit exceeded"):
        _tool(memory_bytes=256 * 1024 * 1024).invoke(
            {"code": "chunks = []\nfor _ in range(100):\n    chunks.append(bytearray(10 ** 7))"}
        )


def test_fork_bomb_is_contained() -> None:
    """Bounded on purpose: at most 200 forks even if the process cap were missing."""
    marker = _marker()
    code = (
        "import os\n"
        f"SLEEPER = {_sleeper(marker)}\n"
        "forked = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            os.execv(SLEEPER[0], SLEEPER)\n"
        "        forked += 1\n"
        "except OSError as exc:\n"
        "    print('fork refused:', type(exc).__name__)\n"
        "print('forked', forked)\n"
    )
    out = _tool(max_processes=16).invoke({"code": code})
    assert "fork refused: BlockingIOError" in out
    assert 0 < int(re.search(r"forked (\d+)", out).group(1)) < 16
    _assert_no_process(marker)


def test_cpu_and_core_limits_are_set() -> None:
    code = "import resource\nprint(resource.getrlimit(resource.RLIMIT_CPU), resource.getrlimit(resource.RLIMIT_CORE))"
    limits = SandboxLimits(timeout_s=5)
    assert _tool(timeout_s=5).invoke({"code": code}) == f"{(limits.cpu_seconds, limits.cpu_seconds + 1)} (0, 0)"


def test_deep_recursion_ends_with_recursion_error() -> None:
    with pytest.raises(ToolException, match="RecursionError"):
        _tool().invoke({"code": "def down(n):\n    return down(n + 1)\ndown(0)"})


def test_huge_output_is_truncated_with_bounded_memory() -> None:
    tracemalloc.start()
    try:
        started = time.monotonic()
        out = _tool().invoke({"code": "import sys\nsys.stdout.write('x' * (200 * 1024 * 1024))"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.endswith("[output truncated: more than 64 KiB printed, program stopped]")
    assert len(out) < 70 * 1024
    assert peak < 8 * 1024 * 1024, f"parent held {peak} bytes of output"
    assert time.monotonic() - started < 5


def test_endless_printing_is_stopped_at_the_cap() -> None:
    out = _tool(timeout_s=5).invoke({"code": "while True:\n    print('spam' * 100)"})
    assert "[output truncated" in out


def test_file_size_is_capped() -> None:
    code = "open('small.bin', 'wb').write(b'0' * 1024)\nopen('big.bin', 'wb').write(b'0' * (4 * 1024 * 1024))"
    with pytest.raises(ToolException, match="File too large"):
        _tool(max_file_bytes=1024 * 1024).invoke({"code": code})


@needs_namespaces
def test_private_tmpfs_is_capped_in_total() -> None:
    code = (
        "written = 0\n"
        "try:\n"
        "    for name in 'abcdef':\n"
        "        open(f'/tmp/{name}.bin', 'wb').write(b'0' * (2 * 1024 * 1024))\n"
        "        written += 1\n"
        "except OSError as exc:\n"
        "    print(exc.strerror)\n"
        "print('written', written)\n"
    )
    out = _tool(tmpfs_bytes=5 * 1024 * 1024).invoke({"code": code})
    assert out.splitlines() == ["No space left on device", "written 2"]


def test_parent_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_API_KEY", "sk-secret-123")
    out = _tool().invoke({"code": "import os\nprint(os.environ.get('FAKE_API_KEY'))\nprint(dict(os.environ))"})
    assert out.splitlines()[0] == "None"
    assert "sk-secret-123" not in out


@needs_namespaces
def test_tmp_and_working_folder_are_private_and_fresh() -> None:
    name = f"{_marker()}.txt"
    code = (
        "import os\n"
        "print(os.getcwd(), sorted(os.listdir('.')), os.listdir('/dev/shm'))\n"
        f"open('/tmp/{name}', 'w').write('x')\n"
        f"open('/dev/shm/{name}', 'w').write('x')\n"
        "open('note.txt', 'w').write('y')\n"
        "print(sorted(os.listdir('.')), os.listdir('/dev/shm'))\n"
    )
    # A runtime installed under /tmp (a venv in a checkout there) is bound read-only at its
    # own path, so the first folder of that path shows in the private /tmp too.
    runtime = sorted({Path(p).relative_to("/tmp").parts[0] for p in _runtime_paths() if Path(p).is_relative_to("/tmp")})
    first = _tool().invoke({"code": code}).splitlines()
    assert first == [f"/tmp {sorted(['main.py', *runtime])} []", f"{sorted(['main.py', 'note.txt', name, *runtime])} [{name!r}]"]
    for host_folder in {tempfile.gettempdir(), "/tmp", "/dev/shm"}:
        assert not (Path(host_folder) / name).exists()
    assert _tool().invoke({"code": code}).splitlines() == first


def _runtime_paths() -> list[str]:
    """What the sandbox binds for the interpreter: its prefixes, executable and package folders."""
    return [sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), *python_sandbox.site_dirs()]


def _outside_sandbox_tmp(folders: list[str]) -> list[str]:
    """The folders not under /tmp, which inside the sandbox is its own (HOME may be there, e.g. for nobody)."""
    return [folder for folder in folders if not Path(folder).is_relative_to("/tmp")]


@needs_namespaces
def test_writes_outside_tmp_fail_clearly() -> None:
    targets = _outside_sandbox_tmp(["/", "/usr", "/etc", "/dev", sys.prefix, str(REPO), str(Path.home())])
    code = (
        "import errno, os\n"
        "open('/tmp/ok.txt', 'w').write('ok')\n"
        "print('tmp', open('/tmp/ok.txt').read())\n"
        f"for folder in {targets!r}:\n"
        "    try:\n"
        "        open(os.path.join(folder, 'agentflow-test.txt'), 'w')\n"
        "        print(folder, 'written')\n"
        "    except OSError as exc:\n"
        "        print(folder, errno.errorcode[exc.errno], exc.strerror)\n"
    )
    lines = _tool().invoke({"code": code}).splitlines()
    assert lines[0] == "tmp ok"
    for target, line in zip(targets, lines[1:], strict=True):
        # read-only where the folder is visible, absent where it is not
        assert line in (f"{target} EROFS Read-only file system", f"{target} ENOENT No such file or directory")
    assert not (REPO / "agentflow-test.txt").exists()


def _world_reachable(folder: Path) -> bool:
    """Every folder from / down to `folder` lets other users through."""
    return all(part.stat().st_mode & 0o001 for part in [folder, *folder.parents])


@pytest.fixture
def planted() -> Iterator[Path]:
    """A world-readable file where any other user could read it, under a home folder when we can write one."""
    bases = [Path.home(), Path("/home"), Path(tempfile.gettempdir())]
    base = next(b for b in bases if b.is_dir() and os.access(b, os.W_OK) and _world_reachable(b))
    directory = Path(tempfile.mkdtemp(prefix="agentflow-planted-", dir=base))
    directory.chmod(0o755)
    path = directory / "notes.txt"
    path.write_text("private notes")
    path.chmod(0o644)
    yield path
    shutil.rmtree(directory)


@needs_namespaces
def test_files_outside_the_sandbox_cannot_be_read(planted: Path) -> None:
    code = (
        "import psutil, sys\n"
        "print('imports', psutil.__name__, open(sys.executable, 'rb').read(4))\n"
        "try:\n"
        f"    print(open({str(planted)!r}).read())\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    assert _tool().invoke({"code": code}).splitlines() == ["imports psutil b'\\x7fELF'", "FileNotFoundError"]


@needs_namespaces
def test_only_the_runtime_is_visible() -> None:
    """Listing /, the homes, /work and the project shows nothing but the way to the interpreter."""
    needed = _runtime_paths()
    # The project is listed wherever it is (under /tmp too: only a bound venv may show there).
    folders = [*_outside_sandbox_tmp(["/", "/home", "/root", "/work", str(Path.home()), str(REPO.parent)]), str(REPO)]
    code = (
        "import json, os\n"
        "listing = {}\n"
        f"for folder in {folders!r}:\n"
        "    listing[folder] = sorted(os.listdir(folder)) if os.path.isdir(folder) else None\n"
        "print(json.dumps(listing))\n"
    )
    listing = json.loads(_tool().invoke({"code": code}))
    system = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "tmp", "dev", "proc"}
    assert system & set(listing["/"]) >= {"usr", "etc", "tmp", "dev", "proc"}
    for folder, names in listing.items():
        for name in names or []:
            path = os.path.join(folder, name)
            on_the_way = any(p == path or p.startswith(path.rstrip("/") + "/") for p in needed)
            assert on_the_way or (folder == "/" and name in system), f"{path} is visible in the sandbox"
    assert not any(name in (listing[str(REPO)] or []) for name in ("pyproject.toml", "tests", "agentflow"))


@needs_namespaces
def test_code_runs_unprivileged() -> None:
    """As `nobody`, with no capabilities (it cannot even mount over its own folders), among
    accounts that say nothing about the machine's users."""
    code = (
        "import ctypes, os, pwd\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), [user.pw_name for user in pwd.getpwall()])\n"
        "print([line for line in open('/proc/self/status') if line.startswith('CapEff')][0].split()[1])\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "failed = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0\n"
        "print('mount', 'refused' if failed else 'allowed', os.strerror(ctypes.get_errno()))\n"
    )
    lines = _tool().invoke({"code": code}).splitlines()
    assert lines[0] == f"{NOBODY} {NOBODY} [] ['root', 'nobody']"
    assert int(lines[1], 16) == 0
    assert lines[2] == "mount refused Operation not permitted"


@needs_namespaces
def test_network_is_blocked() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('blocked', type(exc).__name__)\n"
            "with socket.create_server(('127.0.0.1', 0)) as own:\n"
            "    socket.create_connection(own.getsockname(), timeout=2).close()\n"
            "    print('own loopback works')\n"
        )
        out = _tool().invoke({"code": code}).splitlines()
        assert out[0].startswith("blocked"), out
        assert out[1] == "own loopback works"
        with pytest.raises(BlockingIOError):
            listener.accept()


@needs_namespaces
def test_sysv_ipc_is_private() -> None:
    """A System V shared-memory segment of the host (what a database or X server leaves) is not reachable."""
    libc = ctypes.CDLL(None, use_errno=True)
    key = uuid.uuid4().int & 0x3FFFFFFF
    segment = libc.shmget(key, 4096, IPC_CREAT | 0o666)
    assert segment >= 0, os.strerror(ctypes.get_errno())
    try:
        code = (
            "import ctypes\n"
            "libc = ctypes.CDLL(None)\n"
            f"print('host segment', 'visible' if libc.shmget({key}, 0, 0) >= 0 else 'absent')\n"
            f"print('own segment', 'made' if libc.shmget({key}, 4096, {IPC_CREAT | 0o600}) >= 0 else 'refused')\n"
        )
        assert _tool().invoke({"code": code}).splitlines() == ["host segment absent", "own segment made"]
    finally:
        libc.shmctl(segment, IPC_RMID, None)


@needs_namespaces
def test_protections_are_reported() -> None:
    protections = sandbox_protections()
    assert set(protections) == set(PROTECTIONS)
    assert protections == {
        "network_isolated": True,
        "filesystem_isolated": True,
        "processes_contained": True,
        "uid_dropped": IS_ROOT,
    }
    tool = _tool()
    assert tool.network_isolated and tool.filesystem_protected
    assert sandbox_warning() is None


def test_fallback_launcher_when_namespaces_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates a machine that refuses namespaces by making the capability probe report a refusal.

    The code still runs (fallback launcher, host temp folder removed after),
    the missing protections are reported and the warning line names them.
    """
    refusal = "bwrap: No permissions to create new namespace (simulated)"
    monkeypatch.setattr(python_sandbox, "_probe_namespaces", lambda: refusal)
    out = _tool().invoke({"code": "import os\nopen('note.txt', 'w').write('x')\nprint(os.getcwd(), os.listdir('.'))"})
    workdir, listing = out.split(" ", 1)
    assert "note.txt" in listing
    assert workdir != os.getcwd() and not Path(workdir).exists()
    protections = sandbox_protections()
    assert not protections["filesystem_isolated"] and not protections["processes_contained"]
    assert protections["uid_dropped"] == IS_ROOT
    warning = sandbox_warning()
    assert warning is not None and "\n" not in warning
    assert "a private read-only filesystem view, a PID namespace" in warning and refusal in warning
    assert not _tool().filesystem_protected or IS_ROOT
    monkeypatch.undo()
    monkeypatch.setenv(NAMESPACES_ENV, "0")
    assert not sandbox_protections()["processes_contained"]
    assert f"{NAMESPACES_ENV}=0" in sandbox_warning()


@pytest.fixture
def sentinel() -> Iterator[Path]:
    """A file in a folder others may read but not write, outside the sandbox's temp folder."""
    directory = Path(tempfile.mkdtemp(prefix="agentflow-sentinel-"))
    directory.chmod(0o755)
    path = directory / "keep.txt"
    path.write_text("precious")
    path.chmod(0o644)
    yield path
    shutil.rmtree(directory)


@pytest.mark.skipif(not IS_ROOT, reason="only root can switch to an unprivileged uid")
def test_fallback_launcher_still_drops_root(monkeypatch: pytest.MonkeyPatch, sentinel: Path) -> None:
    """Simulates refused namespaces (as above): the uid switch alone still guards the host's files."""
    monkeypatch.setattr(python_sandbox, "_probe_namespaces", lambda: "refused (simulated)")
    code = (
        "import os\n"
        f"path = {str(sentinel)!r}\n"
        "print('read', open(path).read())\n"
        "for action in (lambda: os.remove(path), lambda: open(path, 'w'),"
        " lambda: open(os.path.join(os.path.dirname(path), 'new.txt'), 'w')):\n"
        "    try:\n"
        "        action()\n"
        "        print('allowed')\n"
        "    except PermissionError:\n"
        "        print('denied')\n"
    )
    assert _tool().invoke({"code": code}).splitlines() == ["read precious", "denied", "denied", "denied"]
    assert sentinel.read_text() == "precious"
    assert not (sentinel.parent / "new.txt").exists()


def test_concurrent_runs_do_not_interfere() -> None:
    tool = _tool()
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(lambda i: tool.invoke({"code": f"{i} * 10"}), range(8)))
    assert outputs == [str(i * 10) for i in range(8)]


def test_result_records_protections_per_run() -> None:
    result = run_sandboxed("print('ok')")
    assert result.stdout == "ok\n"
    assert result.returncode == 0
    assert {name: getattr(result, name) for name in PROTECTIONS} == sandbox_protections()


def test_overhead_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/sandbox_overhead.py end to end with two rounds (so the script cannot rot)."""
    spec = importlib.util.spec_from_file_location("sandbox_overhead", REPO / "benchmarks" / "sandbox_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.main(["--rounds", "2"])
    assert set(figures) == {"interpreter_ms", "before_ms", "after_ms", "ratio"}
    assert all(value > 0 for value in figures.values())
    assert "ratio" in capsys.readouterr().out


def _ordinary_uid() -> int:
    """A uid no account uses: an ordinary user's, and not 65534, so the sandbox's own mapping to
    `nobody` is visible (a run as `nobody` could not tell a missing mapping from a working one)."""
    taken = {user.pw_uid for user in pwd.getpwall()}
    return next(uid for uid in range(61000, 65000) if uid not in taken)


def _python_for(uid: int) -> str | None:
    """A Python of our version that `uid` can run (not one under a private home such as /root/.pyenv)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (sys.executable, f"/usr/bin/python{version}"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "pass"], user=uid, group=uid, extra_groups=[], capture_output=True, cwd="/"
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


#: Tests whose subject (rewriting, formatting, the parent's output caps) does not depend on
#: the launch path: the unprivileged re-run leaves them out to stay quick.
_SAME_ON_EVERY_PATH = (
    "expression", "stdout_and_labelled", "no_output", "error_reports", "deep_recursion",
    "huge_output", "endless_printing", "concurrent", "overhead_benchmark",
)  # fmt: skip


@pytest.mark.skipif(not IS_ROOT, reason="already unprivileged: this run is the unprivileged one")
@pytest.mark.timeout(300)
def test_unprivileged_user_passes_the_same_tests(tmp_path: Path) -> None:
    """This file again as an ordinary user: the user-namespace launch path.

    The user gets a home folder of its own under /home (where the
    planted-file test puts its file) and our packages on PYTHONPATH.
    """
    uid = _ordinary_uid()
    python = _python_for(uid)
    if python is None:
        pytest.skip("no python an ordinary user can run: install Debian's python3 (scripts/install.sh does)")
    home = Path(tempfile.mkdtemp(prefix="agentflow-user-", dir="/home" if os.path.isdir("/home") else tmp_path))
    try:
        os.chown(home, uid, uid)
        home.chmod(0o755)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *python_sandbox.site_dirs()]),
        }
        command = [
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(Path(__file__)),
            "-k", f"not ({' or '.join(_SAME_ON_EVERY_PATH)})",
        ]  # fmt: skip
        completed = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=280)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else completed.stderr[-2000:]
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
    assert "failed" not in summary and "passed" in summary, summary


def test_agentflow_run_warns_once_when_the_sandbox_is_degraded(monkeypatch):
    """`agentflow run` says on stderr, in one line, that the python tool lost protections.
    Simulated: namespaces are turned off through their environment switch."""
    from typer.testing import CliRunner

    from agentflow.cli import app

    args = ["run", "What is 2 + 3?", "--model", "tiny", "--max-turns", "1", "--max-new-tokens", "2", "--json"]
    monkeypatch.setenv(NAMESPACES_ENV, "0")
    degraded = CliRunner().invoke(app, args)
    assert degraded.exit_code == 0, degraded.output
    warnings = [line for line in degraded.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "docs/sandbox.md" in warnings[0]
    # without the python tool there is nothing to warn about
    assert "warning:" not in CliRunner().invoke(app, [*args, "--tools", "calculator"]).stderr
    monkeypatch.delenv(NAMESPACES_ENV)
    if sandbox_warning() is None:  # where namespaces work, a normal run says nothing
        assert "warning:" not in CliRunner().invoke(app, args).stderr
