"""The `python` tool's sandbox: each test fails if its protection is removed.

Runs real subprocesses with short timeouts. Tests of protections the kernel
may refuse (network namespace, uid switch) are skipped only when the sandbox
reports the protection unavailable on this machine.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from langchain_core.tools import ToolException

from agentflow.tools.python_sandbox import (
    PythonSandboxTool,
    SandboxLimits,
    add_expression_echo,
    run_sandboxed,
    sandbox_protections,
)

pytestmark = pytest.mark.timeout(60)


def _tool(**limits: float) -> PythonSandboxTool:
    return PythonSandboxTool(limits=SandboxLimits(**limits))


def _assert_gone(pids: list[int], within_s: float = 3.0) -> None:
    """Every pid has exited (a zombie awaiting its reaper counts as gone)."""
    deadline = time.monotonic() + within_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.05)
    assert not alive, f"processes survived the sandbox: {alive}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def test_timeout_kills_the_process_and_its_children() -> None:
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "forked = os.fork()\n"
        "if forked == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('pids', child.pid, forked, flush=True)\n"
        "while True:\n"
        "    pass\n"
    )
    started = time.monotonic()
    with pytest.raises(ToolException, match=r"timed out after 2s") as caught:
        _tool(timeout_s=2).invoke({"code": code})
    assert time.monotonic() - started < 6
    pids = [int(pid) for pid in re.search(r"pids (\d+) (\d+)", str(caught.value)).groups()]
    _assert_gone(pids)


def test_children_do_not_outlive_a_normal_exit() -> None:
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(child.pid)\n"
    )
    started = time.monotonic()
    pid = int(_tool(timeout_s=10).invoke({"code": code}))
    assert time.monotonic() - started < 5
    _assert_gone([pid])


def test_memory_bomb_fails_cleanly() -> None:
    with pytest.raises(ToolException, match="memory limit exceeded"):
        _tool().invoke({"code": "block = bytearray(2 * 1024 ** 3)\nprint(len(block))"})
    with pytest.raises(ToolException, match="memory limit exceeded"):
        _tool(memory_bytes=256 * 1024 * 1024).invoke(
            {"code": "chunks = []\nfor _ in range(100):\n    chunks.append(bytearray(10 ** 7))"}
        )


def test_fork_bomb_is_contained() -> None:
    """Bounded on purpose: at most 200 forks even if the process cap were missing."""
    code = (
        "import os, time\n"
        "pids = []\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        pids.append(pid)\n"
        "except OSError as exc:\n"
        "    print('fork refused:', type(exc).__name__)\n"
        "print('forked', len(pids), *pids)\n"
    )
    out = _tool(max_processes=16).invoke({"code": code})
    assert "fork refused: BlockingIOError" in out
    forked = [int(pid) for pid in out.split("forked", 1)[1].split()]
    assert forked[0] < 16
    _assert_gone(forked[1:])


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
    code = "open('big.bin', 'wb').write(b'0' * (4 * 1024 * 1024))"
    with pytest.raises(ToolException, match="File too large"):
        _tool(max_file_bytes=1024 * 1024).invoke({"code": code})


def test_parent_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_API_KEY", "sk-secret-123")
    out = _tool().invoke({"code": "import os\nprint(os.environ.get('FAKE_API_KEY'))\nprint(dict(os.environ))"})
    assert out.splitlines()[0] == "None"
    assert "sk-secret-123" not in out


def test_runs_in_a_fresh_temp_dir_that_is_removed() -> None:
    out = _tool().invoke({"code": "import os\nopen('note.txt', 'w').write('x')\nprint(os.getcwd(), os.listdir('.'))"})
    workdir, listing = out.split(" ", 1)
    assert "note.txt" in listing
    assert workdir != os.getcwd()
    assert not Path(workdir).exists()


@pytest.fixture
def sentinel() -> Iterator[Path]:
    """A file in a directory others may read but not write, outside the sandbox's temp dir."""
    directory = Path(tempfile.mkdtemp(prefix="agentflow-sentinel-"))
    directory.chmod(0o755)
    path = directory / "keep.txt"
    path.write_text("precious")
    path.chmod(0o644)
    yield path
    shutil.rmtree(directory)


def test_files_outside_the_temp_dir_cannot_be_changed(sentinel: Path) -> None:
    tool = _tool()
    if os.geteuid() != 0:
        pytest.skip("not running as root: the sandbox cannot switch to an unprivileged uid")
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
    out = tool.invoke({"code": code})
    assert out.splitlines() == ["read precious", "denied", "denied", "denied"]
    assert sentinel.read_text() == "precious"
    assert not (sentinel.parent / "new.txt").exists()


def _kernel_allows_network_namespace() -> bool:
    """Probe unshare(CLONE_NEWNET) in a throwaway child, independently of the sandbox code."""
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        os._exit(0 if libc.unshare(0x40000000) == 0 else 1)
    return os.waitpid(pid, 0)[1] == 0


def test_network_is_blocked() -> None:
    if not _kernel_allows_network_namespace():
        pytest.skip("the kernel refuses a private network namespace here")
    tool = _tool()
    assert tool.network_isolated
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
            "    print('blocked', exc)\n"
        )
        out = tool.invoke({"code": code})
        assert out.startswith("blocked"), out
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_protections_are_reported() -> None:
    protections = sandbox_protections()
    assert set(protections) == {"network_isolated", "uid_dropped"}
    if os.geteuid() == 0:
        assert protections["uid_dropped"]


def test_concurrent_runs_do_not_interfere() -> None:
    tool = _tool()
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(lambda i: tool.invoke({"code": f"{i} * 10"}), range(8)))
    assert outputs == [str(i * 10) for i in range(8)]


def test_result_records_protections_per_run() -> None:
    result = run_sandboxed("print('ok')")
    assert result.stdout == "ok\n"
    assert result.returncode == 0
    assert result.network_isolated == sandbox_protections()["network_isolated"]
