"""Child processes that cannot outlive the environment that started them.

Every server runs as a direct child with two guarantees:

- ``PR_SET_PDEATHSIG``: Linux sends the child SIGKILL the moment its parent thread
  dies, so a test run killed with SIGKILL still leaves no server behind. The signal
  follows the *thread* that forked, which is why the environment starts every process
  from the thread that owns it and never from a pool thread. util-linux's ``setpriv
  --pdeathsig KILL`` sets it and then execs the server; Python code run between fork and
  exec (``preexec_fn``) can deadlock in a process with threads, as a test runner is, so
  that is only the fallback where ``setpriv`` is missing.
- Its own session (``start_new_session``), so stopping it reaches every process it
  forked itself (PostgreSQL's backends, a JVM's helpers).

A server's stdout and stderr go to a log file whose tail is quoted when it fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from jobqueue.errors import TemporaryError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True)


_SETPRIV = shutil.which("setpriv")


def _die_with_parent() -> None:
    """Run in the child between fork and exec: ask for SIGKILL when the parent dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class ServerFailedError(TemporaryError):
    """A local server exited or did not become ready in time."""


class ManagedProcess:
    """One child process with a log file, started and stopped on demand."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.running():
            return
        with self.log_path.open("ab") as log:
            argv = self.argv
            if _SETPRIV:
                argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
                preexec_fn=None if _SETPRIV else _die_with_parent,  # noqa: PLW1509 - see above
            )
        logger.debug("Started %s (pid %s): %s", self.name, self._popen.pid, " ".join(self.argv))

    def stop(self, grace_s: float = 10.0) -> None:
        """Signal the whole process group, then SIGKILL what is left after ``grace_s``."""
        if self._popen is None:
            return
        popen, self._popen = self._popen, None
        if popen.poll() is None:
            self._signal_group(popen.pid, self.stop_signal if grace_s > 0 else signal.SIGKILL)
            try:
                popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, grace_s)
        # Stragglers in the group (forked helpers) go too, whatever the leader did.
        self._signal_group(popen.pid, signal.SIGKILL)
        popen.wait()

    def kill(self) -> None:
        """SIGKILL at once: what a crash looks like to everyone else."""
        self.stop(grace_s=0)

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(
        self, check: Callable[[], bool], *, timeout_s: float, what: str = "ready"
    ) -> None:
        """Poll ``check`` until it is true; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02  # seconds; doubles up to 0.25 so fast servers are seen at once
        while True:
            if not self.running():
                code = self._popen.returncode if self._popen else None
                raise ServerFailedError(
                    f"{self.name} exited (code {code}) before it was {what}; "
                    f"its log {self.log_path} ends with:\n{self.log_tail()}"
                )
            if check():
                return
            if time.monotonic() > deadline:
                raise ServerFailedError(
                    f"{self.name} was not {what} within {timeout_s:.0f} s; "
                    f"its log {self.log_path} ends with:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def run_to_completion(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> None:
    """Run a set-up command (initdb, a storage format) and fail with its output if it fails."""
    process = ManagedProcess(name, argv, log_path=log_path, env=env, user=user)
    process.start()
    assert process._popen is not None
    try:
        code = process._popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise ServerFailedError(
            f"{name} did not finish within {timeout_s:.0f} s:\n{process.log_tail()}"
        ) from None
    if code != 0:
        raise ServerFailedError(f"{name} failed with exit code {code}:\n{process.log_tail()}")
