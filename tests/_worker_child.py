"""`python -m blazen_trio ARGS...` in a child process that dies with the test process.

A worker has no reason to stop when the process that started it goes away, so a test process
killed before its teardown could run (SIGKILL, a CI timeout) left its workers running for ever,
claiming runs on the server. This launcher reads its stdin, a pipe the test process alone holds
open, in a daemon thread: the kernel closes that pipe when the test process ends, however it
ends, and the launcher then kills itself. Run by tests/test_worker_processes.py.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading


def die_with_the_test_process() -> None:
    # The raw descriptor, not sys.stdin: a daemon thread blocked inside the buffered reader
    # holds its lock, and the interpreter aborts when it cannot take it at exit.
    while os.read(sys.stdin.fileno(), 4096):
        pass  # nothing is ever written: only the end of the file matters
    os.kill(os.getpid(), signal.SIGKILL)


threading.Thread(target=die_with_the_test_process, daemon=True).start()
runpy.run_module("blazen_trio", run_name="__main__", alter_sys=True)
