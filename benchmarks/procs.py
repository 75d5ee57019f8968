"""Child processes of the harness: started in their own session, ended by their own id only."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

_CHILDREN: list[Proc] = []
_APT_UPDATED = False


def _child_setup() -> None:
    """Runs in the child before exec: its own session, and it dies with the harness."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: nginx passes it on to its workers


def can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """``argv`` under ``taskset -c cpus`` (or as is when pinning is off)."""
    if cpus is None or not can_pin():
        return argv
    return ["taskset", "-c", cpus, *argv]


class Proc:
    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.errlog = logdir / f"{name}.stderr"
        self.cwd = cwd
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.errlog, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the proxy's access log: kept on, thrown away
                stderr=err,
                cwd=self.cwd,
                env=self.env,
                preexec_fn=_child_setup,
            )
        _CHILDREN.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stderr_tail(self, limit: int = 3000) -> str:
        try:
            data = self.errlog.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace").strip()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the child's own process group, SIGKILL after ``grace`` seconds."""
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)  # the group this harness created for it
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group (e.g. nginx workers)
        if self in _CHILDREN:
            _CHILDREN.remove(self)


def stop_all() -> None:
    for proc in reversed(list(_CHILDREN)):
        with contextlib.suppress(Exception):
            proc.stop(grace=3.0)


atexit.register(stop_all)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def set_up_client(cpu: str) -> None:
    """Pin this process, the harness's load client, to ``cpu`` (when pinning is on), and raise
    its open-file limit for the many client sockets."""
    if can_pin():
        os.sched_setaffinity(0, {int(cpu)})
    else:
        _say("fewer than 2 cores or no taskset: nothing is pinned")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def run_within_budget(
    run: Callable[[], int],
    budget: int,
    aborted: type[BaseException],
    abort_code: Callable[[], int],
    what: str,
) -> int:
    """``run()`` under a SIGALRM in ``budget`` s, its children stopped however it ends.

    The caller's signal handlers raise ``aborted``: that is said and ends with ``abort_code()``;
    a set-up failure (RuntimeError, OSError: the upstream, the results folder) ends with 2.
    """
    signal.alarm(budget)
    try:
        return run()
    except aborted as e:
        _say(f"aborted: {e}")
        return abort_code()
    except (RuntimeError, OSError) as e:
        _say(f"cannot run {what}: {e}")
        return 2
    finally:
        signal.alarm(0)
        stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: Proc | None, timeout: float = 20.0) -> bool:
    """Bounded poll until 127.0.0.1:port accepts; False when ``proc`` died or time ran out."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if proc is not None and not proc.alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return False


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


def ensure_tool(binary: str, packages: list[str], log: list[str]) -> str | None:
    """Path of ``binary``; installs it from Debian's archive when missing (root only)."""
    global _APT_UPDATED
    found = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.path.exists(p)), None
    )
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.append(f"{binary}: missing, and apt-get is not usable here")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        if not _APT_UPDATED:
            print("running apt-get update ...", file=sys.stderr, flush=True)
            subprocess.run(
                ["apt-get", "update", "-qq"],
                env=env,
                timeout=300,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _APT_UPDATED = True
        for pkg in packages:
            print(f"installing {pkg} ...", file=sys.stderr, flush=True)
            r = subprocess.run(
                ["apt-get", "install", "-y", "-qq", pkg],
                env=env,
                timeout=600,
                capture_output=True,
                check=False,
            )
            if r.returncode == 0:
                break
            log.append(f"apt-get install {pkg}: {r.stderr.decode(errors='replace')[-300:]}")
    except subprocess.TimeoutExpired:
        log.append(f"{binary}: apt-get timed out")
    return shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.path.exists(p)), None
    )


def pip_install_in_venv(
    venv: Path, spec: str, what: str, log: list[str], timeout: float = 600.0, note: str = ""
) -> None:
    """pip-install ``spec`` into the venv ``venv``, creating the venv first when it has none.

    What fails goes to ``log`` (a timeout or an OSError under the name ``what``); the caller
    looks for the installed file itself.
    """
    py = venv / "bin" / "python"
    try:
        if not py.exists():
            _say(f"creating a venv in {venv} ...")
            r = subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                timeout=120,
                capture_output=True,
                check=False,
            )
            if r.returncode != 0:
                log.append(f"venv {venv}: {r.stderr.decode(errors='replace')[-400:]}")
                return
        _say(f"installing {spec} into {venv}{note} ...")
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", spec],
            timeout=timeout,
            capture_output=True,
            check=False,
        )
        if r.returncode != 0:
            log.append(f"pip install {spec}: {r.stderr.decode(errors='replace')[-600:]}")
    except subprocess.TimeoutExpired:
        log.append(f"{what}: creating the venv or pip install timed out")
    except OSError as e:
        log.append(f"{what}: {e}")


def ensure_venv_tool(binary: str, package: str, venv: Path, log: list[str]) -> str | None:
    """Path of ``binary``: on PATH, else in ``venv``, else pip-installs ``package`` there."""
    found = shutil.which(binary)
    if found:
        return found
    exe = venv / "bin" / binary
    if not exe.exists():
        pip_install_in_venv(venv, package, binary, log)
    return str(exe) if exe.exists() else None
