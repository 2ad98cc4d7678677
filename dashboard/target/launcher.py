"""Start the runner and renderer children: one fork of a warm zygote each, or one interpreter.

Every migration and every rendering runs in a child of its own (Alembic keeps `context`/`op`
in module globals and a stock env.py resets logging). A fresh interpreter spends most of a
short run importing SQLAlchemy, Alembic and Flask, so each process that starts children keeps
one *zygote*: a child that imported them once and forks a new child per request. The forked
child is as fresh as an interpreter for everything the managed app brings (its modules, its
logging, its env.py): only the zygote's imports are shared.

- The request (the child's payload, its environment and working directory) travels over a
  socket, never on a command line, where `ps` would show a password.
- The zygote dies with the process that started it (its control socket closes), and takes its
  children with it; each child also dies with the zygote (PR_SET_PDEATHSIG), so no orphan
  keeps migrating when the supervisor is gone.
- `PYTHONHASHSEED=0` in the zygote: Alembic picks which version row a merge step updates by set
  order, and every process must render the same SQL for the same plan.

`DASHBOARD_CHILD_START=spawn` starts a fresh interpreter per child instead (`python -m
dashboard.target.runner`), as earlier versions did.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import IO

from dashboard.processes import die_with_parent

START_VARIABLE = "DASHBOARD_CHILD_START"
_ENTRIES = {
    "runner": "dashboard.target.runner",
    "renderer": "dashboard.target.renderer",
}
# What the zygote imports once, so that no child pays for it again.
_PRELOAD = (
    "dashboard.target.runner",
    "dashboard.target.renderer",
    "alembic.command",
    "alembic.autogenerate",
    "alembic.runtime.migration",
    "flask_sqlalchemy",
    "flask_migrate",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.mysql.pymysql",
    "psycopg",
    "pymysql",
)
_LENGTH = struct.Struct("!I")
# Not `-m dashboard.target.launcher`: the `dashboard` package imports this module first. No
# collection while the zygote imports: what it imports lives as long as it does (see _serve).
_ZYGOTE_ENTRY = (
    "import gc; gc.disable(); from dashboard.target.launcher import zygote_main; zygote_main()"
)


def start_mode() -> str:
    """`zygote` (the default) or `spawn`, from $DASHBOARD_CHILD_START."""
    mode = os.environ.get(START_VARIABLE, "zygote").strip().lower() or "zygote"
    return mode if mode in {"zygote", "spawn"} else "zygote"


class Child:
    """A started child: its pid, its output as text, and how it ended."""

    def __init__(
        self,
        pid: int,
        stdout: IO[str],
        stderr: IO[str] | None,
        wait: Callable[[], int],
    ) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self._wait = wait
        self._returncode: int | None = None

    def wait(self) -> int:
        """Block until the child ends; its exit status, or minus the signal that killed it."""
        if self._returncode is None:
            self._returncode = self._wait()
        return self._returncode

    def kill(self) -> None:
        if self._returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.kill()
        self.close()
        self.wait()


def start_child(
    entry: str, payload: str, *, env: Mapping[str, str], merge_stderr: bool = True
) -> Child:
    """Start the `entry` child ("runner" or "renderer") on `payload` with environment `env`.

    With `merge_stderr`, the child's stderr goes to the same stream as its stdout.
    """
    if entry not in _ENTRIES:
        raise ValueError(f"no such child: {entry}")
    if start_mode() == "spawn":
        return _spawn(entry, payload, env=env, merge_stderr=merge_stderr)
    return _zygote().start(entry, payload, env=dict(env), merge_stderr=merge_stderr)


def run_child(
    entry: str, payload: str, *, env: Mapping[str, str], timeout: float
) -> tuple[int, str, str]:
    """Run the `entry` child to its end; (exit status, stdout, stderr).

    Raise TimeoutError (after killing it) when it takes longer than `timeout` seconds.
    """
    child = start_child(entry, payload, env=env, merge_stderr=False)
    assert child.stderr is not None
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.append(child.stderr.read()), daemon=True)
    reader.start()
    fired: list[bool] = []

    def give_up() -> None:
        fired.append(True)
        child.kill()

    timer = threading.Timer(timeout, give_up)
    timer.start()
    try:
        out = child.stdout.read()
        reader.join()
        returncode = child.wait()
    finally:
        timer.cancel()
        child.close()
    if fired:
        raise TimeoutError(f"the {entry} child took longer than {timeout:g} s")
    return returncode, out, "".join(errors)


def prestart() -> None:
    """Start this process's zygote now, in the background, if children start from one."""
    if start_mode() == "zygote":
        _zygote().ensure_started()


# --- a fresh interpreter per child ----------------------------------------------------------


def _spawn(entry: str, payload: str, *, env: Mapping[str, str], merge_stderr: bool) -> Child:
    process = subprocess.Popen(
        [sys.executable, "-m", _ENTRIES[entry]],
        env={**env, "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert process.stdin is not None and process.stdout is not None
    # The child reads all of its payload before it prints anything.
    process.stdin.write(payload)
    process.stdin.close()
    return Child(process.pid, process.stdout, process.stderr, process.wait)


def read_payload() -> str:
    """In a spawned child: the payload its parent wrote on stdin (then stdin is empty)."""
    payload = sys.stdin.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return payload


# --- the zygote, as its parent sees it ------------------------------------------------------


class _Zygote:
    """This process's zygote: started on first use, restarted if it died, dropped in a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._owner = os.getpid()
        self._stop_registered = False

    def stop(self) -> None:
        """At exit: hang up, so the zygote ends (taking any child still running along)."""
        if os.getpid() != self._owner:
            return  # a forked copy of the process that started it: not ours to stop
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self._process.wait(timeout=5)

    def ensure_started(self) -> socket.socket:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            assert self._control is not None
            return self._control

    def forget_if_dead(self) -> None:
        """After a request went unanswered: wait for a dying zygote, so the next is new."""
        with self._lock:
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=5)

    def _start(self) -> None:
        if self._control is not None:
            self._control.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = "0"
        env["PYTHONUNBUFFERED"] = "1"
        env["DASHBOARD_ZYGOTE_FD"] = str(theirs.fileno())
        self._process = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE_ENTRY],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self._control = ours
        if not self._stop_registered:
            atexit.register(self.stop)
            self._stop_registered = True

    def start(self, entry: str, payload: str, *, env: dict[str, str], merge_stderr: bool) -> Child:
        request = json.dumps(
            {"entry": entry, "payload": payload, "env": env, "cwd": os.getcwd()}
        ).encode()
        for attempt in (1, 2):
            control = self.ensure_started()
            out_r, out_w = os.pipe()
            err_r, err_w = (None, out_w) if merge_stderr else os.pipe()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with self._lock:
                    socket.send_fds(control, [b"L"], [theirs.fileno(), out_w, err_w])
                sent = True
            except OSError:
                sent = False
            finally:
                # Only the zygote (and then the child) may hold these: were we to keep them,
                # a zygote that died would never look like one.
                theirs.close()
                os.close(out_w)
                if err_w != out_w:
                    os.close(err_w)
            try:
                if not sent:
                    raise ConnectionError("the zygote is gone")
                ours.sendall(_LENGTH.pack(len(request)) + request)
                pid = json.loads(_receive(ours))["pid"]
            except (OSError, ValueError, KeyError):
                for fd in (out_r, err_r):
                    if fd is not None:
                        os.close(fd)
                ours.close()
                if attempt == 2:
                    raise
                self.forget_if_dead()
                continue
            stdout = open(out_r, encoding="utf-8", errors="replace")  # noqa: SIM115
            stderr = None
            if err_r is not None:
                stderr = open(err_r, encoding="utf-8", errors="replace")  # noqa: SIM115
            return Child(pid, stdout, stderr, lambda sock=ours: _exit_status(sock))
        raise AssertionError("unreachable")


def _receive(sock: socket.socket) -> bytes:
    header = _read_exactly(sock, _LENGTH.size)
    return _read_exactly(sock, _LENGTH.unpack(header)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the zygote hung up")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _exit_status(sock: socket.socket) -> int:
    """How the child ended, as the zygote reaped it; SIGKILL if the zygote itself is gone."""
    try:
        return int(json.loads(_receive(sock))["status"])
    except (OSError, ValueError, KeyError):
        return -signal.SIGKILL
    finally:
        sock.close()


_THE_ZYGOTE = _Zygote()


def _zygote() -> _Zygote:
    return _THE_ZYGOTE


def _forget_in_fork() -> None:
    """In a forked copy of this process (an RQ work horse): the zygote is the parent's."""
    global _THE_ZYGOTE
    inherited = _THE_ZYGOTE._control
    _THE_ZYGOTE = _Zygote()
    if inherited is not None:
        with contextlib.suppress(OSError):
            inherited.close()


os.register_at_fork(after_in_child=_forget_in_fork)


# --- the zygote itself ----------------------------------------------------------------------


def _serve(control: socket.socket) -> None:
    """Fork a child per request; tell each requester its child's pid, then how it ended."""
    for module in _PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(module)
    # Every child shares these imports: frozen, no child's collections walk them again (nor
    # write to their pages, which the fork shares), and the children collect their own objects.
    gc.freeze()
    gc.enable()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_r, selectors.EVENT_READ, "reap")

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            sock = children.pop(pid, None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    _send(sock, {"status": os.waitstatus_to_exitcode(status)})
                sock.close()

    while True:
        for key, _ in selector.select():
            if key.data == "reap":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                reap()
                continue
            try:
                message, fds, _, _ = socket.recv_fds(control, 1, 3)
            except OSError:
                message, fds = b"", []
            if not message:  # our parent is gone: so are its children
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                os._exit(0)
            requester = socket.socket(fileno=fds[0])
            out_w, err_w = fds[1], fds[2]
            try:
                requester.settimeout(30)
                request = json.loads(_receive(requester))
                requester.settimeout(None)
            except (OSError, ValueError):
                requester.close()
                os.close(out_w)
                if err_w != out_w:
                    os.close(err_w)
                continue
            zygote = os.getpid()
            pid = os.fork()
            if pid == 0:
                die_with_parent(zygote)  # the zygote has one thread
                requester.close()
                for sock in children.values():
                    sock.close()
                selector.close()
                control.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                _become_child(request, out_w, err_w)
            os.close(out_w)
            if err_w != out_w:
                os.close(err_w)
            try:
                _send(requester, {"pid": pid})
            except OSError:
                requester.close()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                continue
            children[pid] = requester
            reap()


def _send(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _become_child(request: dict, out_w: int, err_w: int) -> None:
    """In the forked child: take the requester's streams, environment and folder; run."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        if err_w != out_w:
            os.close(err_w)
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = sys.__stdout__ = _unbuffered(1)
        sys.stderr = sys.__stderr__ = _unbuffered(2)
        os.environ.clear()
        os.environ.update(request["env"])
        cwd = request["cwd"]
        os.chdir(cwd)
        if sys.path and sys.path[0] == _ZYGOTE_CWD:
            sys.path[0] = cwd
        module = sys.modules.get(_ENTRIES[request["entry"]]) or __import__(
            _ENTRIES[request["entry"]], fromlist=["child_main"]
        )
        sys.argv = [module.__file__ or request["entry"]]
        code = module.child_main(request["payload"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # What the interpreter does on its way out: wait for the threads, run atexit.
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)


def _unbuffered(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )


_ZYGOTE_CWD = os.getcwd()


def zygote_main() -> None:
    # No PR_SET_PDEATHSIG here: it would follow the thread that started the zygote, which may
    # end long before its process. The control socket closes when the process goes.
    control = socket.socket(fileno=int(os.environ.pop("DASHBOARD_ZYGOTE_FD")))
    _serve(control)


if __name__ == "__main__":
    zygote_main()
