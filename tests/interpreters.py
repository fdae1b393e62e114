"""Running Python in a fresh interpreter from a test, so that a hang says where it hung.

A child that outlives its timeout is sent SIGABRT; Python's fault handler (enabled for the child by
``PYTHONFAULTHANDLER``) then writes every thread's stack to its stderr before it dies, and that stack is in the
failure message, where ``subprocess.run(..., timeout=...)`` reports only the command line. Stdin is /dev/null: a
child never reads what its parent (a pytest-xdist worker) was given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings


class InterpreterHung(AssertionError):
    """A fresh interpreter did not finish within its timeout; the message carries its stacks."""


def _attempt(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(argv, env={**env, "PYTHONFAULTHANDLER": "1"}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # the fault handler dumps every thread's stack, then the child dies
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise InterpreterHung(f"{argv[:2]} did not finish in {timeout:g} s; its stacks at SIGABRT:\n"
                              f"{(err or '')[-6000:]}\nits stdout:\n{(out or '')[-2000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_python(args: list[str], env: dict[str, str] | None = None, timeout: float = 120,
               attempts: int = 1) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (this interpreter) with ``env`` (default: this process's) and return its completed process.

    Args:
        args: the interpreter's arguments (a script and its argv, or ``["-c", code]``).
        env: the child's whole environment.
        timeout: seconds per attempt.
        attempts: how many times a hung child is run again before the test fails. Each hang is reported as a warning
            with its stacks (so a retried hang still shows in the run's warnings summary); a child that finishes, with
            any exit status, is returned at once.

    Raises:
        InterpreterHung: the last attempt hung; the message holds its stacks.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1; got {attempts}")
    env = dict(os.environ) if env is None else env
    for left in range(attempts - 1, -1, -1):
        try:
            return _attempt([sys.executable, *args], env, timeout)
        except InterpreterHung as hung:
            if not left:
                raise
            warnings.warn(f"retrying a hung interpreter: {hung}", RuntimeWarning, stacklevel=2)
    raise AssertionError("unreachable")
