"""The Python sandbox of tool-using rollouts: what it runs, and what it refuses or stops."""

from __future__ import annotations

import socket
import threading

from rayft_core.train.sandbox import run_python


def test_code_runs_and_writes_inside_its_own_directory():
    result = run_python("import os\nopen('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read(), 6 * 7)")
    assert result.exit_code == 0 and result.observation == "kept 42\n"


def test_errors_timeouts_and_memory_are_observations(tmp_path):
    failed = run_python("print('before')\n1 / 0")
    assert failed.exit_code == 1 and failed.observation.startswith("before\n")
    assert "ZeroDivisionError: division by zero" in failed.observation and "<string>" not in failed.observation
    looping = run_python("while True:\n    pass", timeout=1.0)
    assert looping.timed_out and looping.exit_code is None and "time limit" in looping.observation
    hungry = run_python("x = bytearray(4 * 2**30)", memory_mb=256)
    assert hungry.exit_code != 0 and "MemoryError" in hungry.observation
    loud = run_python("print('x' * 100_000)", max_output=1000)
    assert loud.truncated and len(loud.observation) < 1100 and loud.observation.endswith("[output cut]")


def test_network_writes_outside_and_other_processes_are_refused(tmp_path):
    with socket.socket() as server:  # a listener on loopback the code would reach if it could
        server.bind(("127.0.0.1", 0))
        server.listen()
        threading.Thread(target=lambda: server.accept, daemon=True).start()
        port = server.getsockname()[1]
        net = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert net.exit_code == 1 and "PermissionError: the sandbox does not allow socket." in net.observation
    outside = tmp_path / "outside.txt"
    for code in (
        f"open({str(outside)!r}, 'w').write('escaped')",
        f"import os\nos.rename('main.py', {str(outside)!r})",
        "open('../escaped.txt', 'w')",
    ):
        refused = run_python(code)
        assert refused.exit_code == 1 and "PermissionError: the sandbox" in refused.observation, refused.observation
    assert not outside.exists()
    spawn = run_python("import subprocess\nsubprocess.run(['true'])")
    assert "PermissionError: the sandbox does not allow subprocess.Popen" in spawn.observation
    native = run_python("import ctypes\nctypes.CDLL(None)")
    assert "the sandbox does not allow ctypes.dlopen" in native.observation
    shell = run_python("import os\nos.system('touch /tmp/rayft-sandbox-escape')")
    assert "the sandbox does not allow os.system" in shell.observation
