"""Reading a process tree's CPU time and RSS from /proc (Linux only)."""

from __future__ import annotations

import contextlib
import os
import platform
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    """What every run records of the machine: its CPUs, their model, the kernel, the Python."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    return data[data.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and all its descendants (nginx workers, proxy worker processes)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    out: list[int] = []
    todo = [root]
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each live pid, in seconds."""
    out: dict[int, float] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    return sum(rss_kib(pid) for pid in tree(root))


class CpuMeter:
    """CPU used by a process tree between ``start()`` and ``stop()``, in % of one core."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._t0 = 0.0
        self._c0: dict[int, float] = {}

    def start(self) -> None:
        self._c0 = cpu_seconds(tree(self.root))
        self._t0 = time.monotonic()

    def stop(self) -> float:
        c1 = cpu_seconds(tree(self.root))
        wall = time.monotonic() - self._t0
        used = sum(c1[pid] - self._c0.get(pid, 0.0) for pid in c1)
        return 100.0 * used / wall if wall > 0 else 0.0


def core_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one core since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]] + [0] * 8
                # user, nice, system, steal; irq and softirq left out: the proxy's own network
                # work lands there without being charged to its process
                busy = v[0] + v[1] + v[2] + v[7]
                return busy, sum(v[:8])
    return 0, 0


class CoreMeter:
    """How busy one core was between ``start()`` and ``stop()``, in %."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self._b0 = self._t0 = 0

    def start(self) -> None:
        self._b0, self._t0 = core_ticks(self.cpu)

    def stop(self) -> float:
        b1, t1 = core_ticks(self.cpu)
        return 100.0 * (b1 - self._b0) / (t1 - self._t0) if t1 > self._t0 else 0.0


def wait_quiet(cpu: int, busy_below: float, max_wait: float, window: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) until ``cpu`` is less than ``busy_below`` % busy over one
    ``window``; returns the seconds waited."""
    t0 = time.monotonic()
    for _ in range(int(max_wait / window) + 1):
        meter = CoreMeter(cpu)
        meter.start()
        time.sleep(window)
        if meter.stop() < busy_below or time.monotonic() - t0 >= max_wait:
            break
    return time.monotonic() - t0
