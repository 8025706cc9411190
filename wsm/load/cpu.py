"""CPU time per component of a load run, from /proc: what each part of the product (and of the
bench) costs per customer message.

    meter = CpuMeter([Component("gateway", lambda: [gateway_pid]), ...])
    meter.sample()                      # at the start of the measured window
    ...                                 # sample() again every second or so while it runs
    meter.sample()                      # at its end
    meter.ms_per_message(messages)      # {"gateway": 1.9, ...}

A component is one or more root processes and, unless `tree=False`, all their descendants
(found anew at every sample: a worker fleet's children, nginx's workers, a process restarted
under chaos). Each process's utime + stime is read at every sample; its CPU in the window is
its last reading minus its reading at the window's start (0 for a process born inside the
window, told by its start time). Reaped children's times (cutime) are not used: they would
count a child twice. So a process that dies between two samples loses at most the CPU it used
since the last one (sample about once a second while the load runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from wsm.stack import Service, Stack

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

# Components that are the product; the rest (the simulator, the customers, a floor's bot) is
# the bench.
PRODUCT = ("gateway", "worker", "redis", "nginx", "api")


@dataclass(frozen=True)
class Component:
    name: str
    roots: Callable[[], Iterable[int | None]]
    tree: bool = True  # also count every descendant of the roots


@dataclass(frozen=True, slots=True)
class _Stat:
    ppid: int
    cpu_ticks: int  # utime + stime
    start_ticks: int  # since boot


def read_stat(pid: int) -> _Stat | None:
    """One process's parent, CPU ticks and start time (None: it is gone)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15, starttime 22.
    return _Stat(int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat.ppid, []).append(int(entry.name))
    return children


@dataclass
class _Seen:
    component: str
    base: int
    last: int


@dataclass
class CpuMeter:
    components: list[Component]
    _seen: dict[int, _Seen] = field(default_factory=dict)
    _started_at_ticks: int | None = None

    def sample(self) -> None:
        tree = _children() if any(c.tree for c in self.components) else {}
        first = self._started_at_ticks is None
        if first:
            self._started_at_ticks = _boot_ticks_now()
        for component in self.components:
            for pid in self._pids(component, tree):
                stat = read_stat(pid)
                if stat is None:
                    continue
                seen = self._seen.get(pid)
                if seen is None:
                    born_inside = (
                        not first
                        and self._started_at_ticks is not None
                        and stat.start_ticks >= self._started_at_ticks
                    )
                    base = 0 if born_inside else stat.cpu_ticks
                    self._seen[pid] = _Seen(component.name, base, stat.cpu_ticks)
                elif seen.component == component.name:
                    seen.last = stat.cpu_ticks

    @staticmethod
    def _pids(component: Component, tree: dict[int, list[int]]) -> list[int]:
        pids = [pid for pid in component.roots() if pid]
        if component.tree:
            queue = list(pids)
            while queue:
                for child in tree.get(queue.pop(), ()):
                    pids.append(child)
                    queue.append(child)
        return pids

    def seconds(self) -> dict[str, float]:
        """CPU seconds per component in the window so far (up to the last sample)."""
        totals = {c.name: 0 for c in self.components}
        for seen in self._seen.values():
            totals[seen.component] += seen.last - seen.base
        return {name: ticks / TICKS_PER_SECOND for name, ticks in totals.items()}

    def ms_per_message(self, messages: int) -> dict[str, float]:
        """CPU ms per message for each component, plus `product` (PRODUCT's sum) and `bench`
        (the rest)."""
        seconds = self.seconds()
        per = {name: 1000 * s / max(1, messages) for name, s in seconds.items()}
        out = {name: round(value, 2) for name, value in per.items()}
        out["product"] = round(sum(v for k, v in per.items() if k in PRODUCT), 2)
        out["bench"] = round(sum(v for k, v in per.items() if k not in PRODUCT), 2)
        return out

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Sample every `interval` seconds until `stop` is set, then once more."""
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        self.sample()


# A stack's service name -> the component it is counted under.
SERVICE_COMPONENT = {"waha-sim": "simulator"}


def stack_components(stack: Stack) -> list[Component]:
    """One component per service of `stack` (its process tree, followed across restarts), and
    `customers`: this process alone (its children are the stack)."""
    components = [
        Component(SERVICE_COMPONENT.get(service.name, service.name), _pid_of(service))
        for service in stack
    ]
    components.append(Component("customers", lambda: [os.getpid()], tree=False))
    return components


def _pid_of(service: Service) -> Callable[[], list[int | None]]:
    """The service's current process (a restarted one too)."""
    return lambda: [service.pid]


def _boot_ticks_now() -> int:
    """Now, in clock ticks since boot (the unit of a process's start time)."""
    uptime = float((PROC / "uptime").read_text().split()[0])
    return int(uptime * TICKS_PER_SECOND)


def product_per_bench(ms: dict[str, float]) -> float | None:
    """The product's CPU over the bench's, in the same run (None without bench CPU).

    On a shared or noisy machine both figures swing together from run to run (by ±15% on the
    seventh session's machine, while this ratio held within ±3%: docs/benchmarks.md), so two
    trees are compared by it, alternating, rather than by their milliseconds."""
    bench = ms.get("bench") or 0
    return round(ms.get("product", 0) / bench, 3) if bench > 0 else None


def cpu_line(ms: dict[str, float]) -> str:
    """`product 4.1 ms (gateway 0.9, worker 2.0, ...); bench 3.2 ms (...); product/bench 1.28`
    for a summary."""
    product = ", ".join(f"{k} {ms[k]}" for k in PRODUCT if k in ms)
    bench = ", ".join(f"{k} {v}" for k, v in ms.items() if k not in (*PRODUCT, "product", "bench"))
    return (
        f"product {ms.get('product')} ms ({product}); bench {ms.get('bench')} ms ({bench}); "
        f"product/bench {product_per_bench(ms)}"
    )
