"""Children in their own process group: TERM then KILL, the whole tree, reaped; loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.workloads.process import (
    Child,
    free_port,
    log_tail,
    port_in_use,
    root_cause,
    run_captured,
)

# A parent that ignores SIGTERM and leaves a grandchild (same group) that ignores it too.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print("grandchild", kid.pid, flush=True)
time.sleep(60)
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds no resources but counts as gone here.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")", 1)[1].split()[0] != "Z"


def test_stop_kills_a_term_ignoring_tree_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = Child([sys.executable, "-c", STUBBORN], env=dict(os.environ), log=log)
    assert child.pgid == child.pid == os.getpgid(child.pid)  # its own group
    deadline = time.monotonic() + 20
    while "grandchild" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(log.read_text().split()[1])
    start = time.monotonic()
    child.stop(grace_s=0.5)
    took = time.monotonic() - start
    assert 0.5 <= took < 10
    assert child.returncode is not None  # reaped by us
    deadline = time.monotonic() + 3
    while _pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(grandchild)
    assert not child.group_alive()
    child.stop(grace_s=0.5)  # twice is harmless


def test_stop_is_quick_for_a_child_that_obeys_sigterm(tmp_path: Path) -> None:
    child = Child(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env=dict(os.environ),
        log=tmp_path / "c.log",
    )
    start = time.monotonic()
    child.stop(grace_s=30)
    assert time.monotonic() - start < 5
    assert child.returncode == -15


def test_missing_executable_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="cannot start /nonexistent/vllm"):
        Child(["/nonexistent/vllm"], env={}, log=tmp_path / "x.log")


def test_log_tail_joins_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "\n\n")
    assert log_tail(log, lines=3) == "line 97 | line 98 | line 99"
    assert log_tail(tmp_path / "missing.log") == ""


def test_ports() -> None:
    port = free_port()
    assert not port_in_use(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert port_in_use(port)


def test_ctrl_c_during_stop_waits_for_the_group_then_interrupts(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = Child([sys.executable, "-c", STUBBORN], env=dict(os.environ), log=log)
    deadline = time.monotonic() + 20
    while "grandchild" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # its SIGTERM handler is set from here on
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            child.stop(grace_s=1.0)
    finally:
        timer.cancel()
    assert not child.group_alive()  # the Ctrl-C did not cut the stop short


# Runs in its own interpreter: it becomes a child subreaper that never reaps, so the group's
# exited grandchild stays a zombie of the group, as vLLM's orphans do until init reaps them.
ZOMBIE_GROUP = """
import ctypes, os, sys, time
from pathlib import Path
from autotune.workloads.process import Child
PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
log = Path(sys.argv[1])
leader = (
    "import os, time\\n"
    "pid = os.fork()\\n"
    "if pid == 0:\\n"
    "    os._exit(0)\\n"
    "print('kid', pid, flush=True)\\n"
    "time.sleep(60)\\n"
)
child = Child([sys.executable, "-c", leader], env=dict(os.environ), log=log)
while "kid" not in log.read_text():
    time.sleep(0.02)
kid = int(log.read_text().split()[1])
start = time.monotonic()
child.stop(grace_s=5.0)
took = time.monotonic() - start
state = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()[0]
print(state, round(took, 2), child.group_alive())
os.waitpid(kid, 0)
"""


def test_a_group_of_zombies_is_gone_at_once(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", ZOMBIE_GROUP, str(tmp_path / "leader.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    state, took, alive = out[0], float(out[1]), out[2]
    assert state == "Z"  # the group still holds a zombie member when stop returns
    assert alive == "False"
    assert took < 2.0  # not the 5 s grace, nor the 5 s KILL loop


# The end of a vLLM start-up failure (shortened from a real 0.23 log): the worker's exception,
# then wrappers that only point at it, the last of them "See root cause above".
_ENGINE = "(EngineCore pid=4051) ERROR 12-02 10:11:12 [core.py:1032] "
VLLM_STARTUP_FAILURE = "".join(
    [
        f"{_ENGINE}EngineCore failed to start.\n",
        f"{_ENGINE}Traceback (most recent call last):\n",
        f'{_ENGINE}  File "vllm/v1/engine/core.py", line 1023\n',
        f"{_ENGINE}AssertionError: Not enough allowed NUMA nodes for 4 workers; "
        "decrease DP/TP/PP\n",
        "{filler}Traceback (most recent call last):\n",
        '  File "vllm/v1/engine/utils.py", line 996, in wait_for_engine_startup\n',
        "Exception: WorkerProc initialization failed due to an exception in a background "
        "process. See stack trace for root cause.\n",
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {{'EngineCore': 1}}\n",
    ]
)


def test_root_cause_is_the_last_exception_that_is_not_a_wrapper(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    filler = "".join(f"(APIServer pid=1) INFO shutting down {k}\n" for k in range(97))
    log.write_text(VLLM_STARTUP_FAILURE.format(filler=filler))
    assert root_cause(log) == (
        "AssertionError: Not enough allowed NUMA nodes for 4 workers; decrease DP/TP/PP"
    )
    # The tail alone would have shown only the wrappers.
    assert "NUMA" not in log_tail(log, lines=8)


def test_root_cause_keeps_the_indented_lines_of_its_message(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "INFO starting\n"
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
        "  Value error, User-specified max_model_len (4096) is greater than the derived "
        "max_model_len (1024) [type=value_error]\n"
        "    For further information visit https://errors.pydantic.dev/2.12/v/value_error\n"
        "INFO shutting down\n"
    )
    cause = root_cause(log)
    assert cause.startswith("pydantic_core._pydantic_core.ValidationError: 1 validation error")
    assert "max_model_len (4096)" in cause and "\n" not in cause
    # vLLM prefixes every line of a process's output, continuation lines too.
    prefixed = tmp_path / "prefixed.log"
    prefixed.write_text(
        "".join(f"(APIServer pid=3762) {line}\n" for line in log.read_text().splitlines())
    )
    assert root_cause(prefixed) == cause
    assert root_cause(tmp_path / "missing.log") == ""
    (tmp_path / "quiet.log").write_text("INFO nothing went wrong\n")
    assert root_cause(tmp_path / "quiet.log") == ""


def test_run_captured_kills_the_group_at_its_timeout() -> None:
    code, out, _ = run_captured(
        [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
        env=os.environ,
        stdin="hello",
        timeout_s=30,
    )
    assert (code, out.strip()) == (0, "HELLO")
    start = time.monotonic()
    code, _, _ = run_captured(
        [sys.executable, "-c", "import time; time.sleep(60)"], env=os.environ, timeout_s=0.5
    )
    assert code is None and time.monotonic() - start < 10
