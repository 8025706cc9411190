"""The load test's CPU meter (wsm/load/cpu.py) counts each process's CPU under its component:
a grandchild born during the window is found through its parent and counted in full, a process
that burned its CPU before the window is not charged for it, and what one component burns is
never counted under another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from wsm.load.cpu import Component, CpuMeter, cpu_line, product_per_bench, read_stat

BURN_SECONDS = 0.3
# Burns BURN_SECONDS of its own CPU, says so, then idles until killed.
BURN = (
    "import sys, time\n"
    f"while time.process_time() < {BURN_SECONDS}: pass\n"
    "print('done', flush=True)\n"
    "time.sleep(120)\n"
)
# Starts the burner as its child (so the burner is a grandchild of the test) and waits.
PARENT = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {BURN!r}]).wait()"


@contextmanager
def spawned(code: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_grandchild_born_in_the_window_is_counted_under_its_component() -> None:
    with spawned("import time; time.sleep(120)") as idle, spawned(PARENT) as parent:
        meter = CpuMeter(
            [
                Component("idle", lambda: [idle.pid]),
                Component("gateway", lambda: [parent.pid]),
                Component("customers", lambda: [os.getpid()], tree=False),
            ]
        )
        meter.sample()
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "done"  # the grandchild burned its share
        meter.sample()
        seconds = meter.seconds()
    assert seconds["gateway"] >= BURN_SECONDS * 0.9  # clock ticks round down
    assert seconds["idle"] < seconds["gateway"]
    per_message = meter.ms_per_message(10)
    # gateway is the product; idle and customers are not.
    assert per_message["product"] == per_message["gateway"] >= BURN_SECONDS * 1000 / 10 * 0.9
    assert per_message["bench"] == round(per_message["idle"] + per_message["customers"], 2)
    assert "gateway" in cpu_line(per_message)


def test_the_summary_gives_the_product_per_bench_ratio_of_the_same_run() -> None:
    ms = {"gateway": 1.5, "worker": 2.5, "simulator": 2.0, "customers": 1.2}
    ms |= {"product": 4.0, "bench": 3.2}
    assert product_per_bench(ms) == 1.25
    assert cpu_line(ms).endswith("; product/bench 1.25")
    # Without bench CPU (nothing measured) there is no ratio, rather than a division by zero.
    assert product_per_bench({"product": 4.0, "bench": 0.0}) is None
    assert product_per_bench({"product": 4.0}) is None


def test_cpu_burned_before_the_window_is_not_charged() -> None:
    with spawned(BURN) as burner:
        assert burner.stdout is not None
        assert burner.stdout.readline().strip() == "done"
        meter = CpuMeter([Component("worker", lambda: [burner.pid])])
        meter.sample()
        meter.sample()
        stat = read_stat(burner.pid)
    assert stat is not None and stat.cpu_ticks > 0  # it did burn, before the window
    assert meter.seconds()["worker"] < BURN_SECONDS


def test_a_process_is_counted_once_even_when_two_components_reach_it() -> None:
    with spawned(PARENT) as parent:
        meter = CpuMeter(
            [
                Component("worker", lambda: [parent.pid]),
                # Also reaches the parent and its grandchild (a mistake in the wiring).
                Component("api", lambda: [parent.pid]),
            ]
        )
        meter.sample()
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "done"
        meter.sample()
        seconds = meter.seconds()
    assert seconds["worker"] >= BURN_SECONDS * 0.9
    assert seconds["api"] == 0
