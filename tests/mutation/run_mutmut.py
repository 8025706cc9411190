"""Run mutmut over one part of wsm in a snapshot copy of the tree, never in the tree itself.

    python tests/mutation/run_mutmut.py gateway            # copy, configure, run, summarise
    python tests/mutation/run_mutmut.py gateway --summary  # summarise a finished run again

Targets (see TARGETS): gateway, worker, state, late (sender, erase, consumer slot), the
smaller slot, sender (with `--names`), erase, spool and fleet, and edge and keeper (the
gateway and worker/ again, without the parts that had runs of their own). Each gets
its own copy under /tmp/wsm-mutmut/<target> (`--dest` to choose) with a [tool.mutmut] section
appended to the copy's pyproject.toml: what to mutate and the fast tests that matter for it.

mutmut 3 maps each test to the functions it calls *in the test process*; code that only runs
in a child process (a gateway or a worker fleet a test starts) counts as "no tests".
`--child-tests` runs those "no tests" mutants of the files in CHILD_TESTS against
real-process tests, with the mutant switched on in the children (they inherit
MUTANT_UNDER_TEST): that is how the lease keeper gets mutated. `--recheck` runs the
survivors again in fresh processes (see recheck()).

Everything runs under `nice -n 10` with at most 2 mutants at a time (a shared 2-core machine).
docs/testing.md has the commands, the scores and what became of every survivor."""

from __future__ import annotations

import argparse
import collections
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEST = Path("/tmp/wsm-mutmut")

# The whole importable project is copied into mutants/ (so nothing is imported from the live
# tree through the editable install); only `mutate` is mutated.
SOURCE_PATHS = ["gateway", "worker", "engine", "shared", "api", "wsm"]
ALSO_COPY = [
    "sitecustomize.py",
    "config",
    "docs",
    "compose.yaml",
    "README.md",
    "nginx",
    "prometheus",
    "grafana",
    "bench",
    "Makefile",
    "Dockerfile",
]

# mutmut's stats pass sets MUTANT_UNDER_TEST=stats. A child process a test starts cannot
# record hits (it has no mutmut configuration in its working directory) and would crash, so
# it runs the original code during that pass; during mutant runs it runs the mutant.
SITECUSTOMIZE = """\
import os

if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    os.environ["MUTANT_UNDER_TEST"] = ""
"""


@dataclass
class Target:
    mutate: list[str]
    tests: list[str]
    exclude: list[str] = field(default_factory=list)  # files under `mutate` left alone
    deselect: list[str] = field(default_factory=list)  # test names left out, and why in docs


# The sender's tests (tests/engine/test_sender*.py but its mutants), run by every target that
# mutates engine/sender.py.
SENDER_TESTS = [
    "tests/engine/test_sender.py",
    "tests/engine/test_sender_echo.py",
    "tests/engine/test_sender_lock.py",
    "tests/engine/test_sender_rate.py",
    "tests/engine/test_sender_sweep.py",
    "tests/engine/test_sender_bound.py",
]
FLEET_FILES = (
    "redis_retry",
    "dlq_cli",
    "cli",
    "process",
    "supervisor",
    "health",
    "heartbeat",
    "reaper_task",
    "stopping",
)
SPOOL_FILES = ("spool", "spool_file", "replay", "batcher")
TARGETS: dict[str, Target] = {
    "gateway": Target(
        mutate=["gateway/*"],
        tests=[
            "tests/gateway/test_webhook.py",
            "tests/gateway/test_spool.py",
            "tests/gateway/test_replay_window.py",
            "tests/gateway/test_outage.py",
            "tests/gateway/test_unsupported_redis.py",
            "tests/gateway/test_mutants.py",
        ],
    ),
    "worker": Target(
        # consumer_slot.py goes with the "late" target (it was being rewritten).
        mutate=["worker/*"],
        exclude=["worker/consumer_slot.py"],
        # The script tests test Lua, not worker/; the fleet tests run worker/ in child
        # processes (see --child-tests).
        tests=[
            "tests/worker/test_consumer_slot.py",  # runs the lease keeper, retries, handler
            "tests/worker/test_handler_seam.py",
            "tests/worker/test_commit_writes.py",
            "tests/worker/test_dead_letter_limits.py",
            "tests/engine/test_wiring.py",
            "tests/worker/test_mutants.py",
        ],
    ),
    "state": Target(
        mutate=["engine/state.py"],
        tests=[
            "tests/engine/test_state.py",
            "tests/engine/test_conversations.py",
            "tests/engine/test_waiting_line_flow.py",
            "tests/engine/test_line_timeout.py",
            "tests/engine/test_sender_echo.py",
            "tests/engine/test_history_bounds.py",  # prune_index
            "tests/engine/test_mutants.py",
        ],
    ),
    # Mutated last, from a snapshot taken after they stopped changing.
    "late": Target(
        mutate=["engine/sender.py", "engine/erase.py", "worker/consumer_slot.py"],
        tests=[
            "tests/worker/test_consumer_slot.py",
            *SENDER_TESTS,
            "tests/engine/test_erase.py",
            "tests/engine/test_mutants.py",
        ],
        # A three-master cluster per mutant run costs more than the run itself; the erase's
        # cluster test covers the same code as its single-Redis twin.
        deselect=["cluster"],
    ),
    # The open items of docs/testing.md, each mutated alone (a small run on a shared machine).
    "slot": Target(
        mutate=["worker/consumer_slot.py"],
        tests=[
            "tests/worker/test_consumer_slot.py",
            "tests/worker/test_ack_later.py",
            "tests/worker/test_claim_pool.py",
            "tests/worker/test_consumer_slot_mutants.py",
        ],
        deselect=["cluster"],
    ),
    # Run with `--names`: LockKeeper and settle_echo first, then the rest (docs/testing.md).
    "sender": Target(
        mutate=["engine/sender.py"],
        tests=[
            *SENDER_TESTS,
            "tests/engine/test_sender_bound_setting.py",
            "tests/engine/test_media_send.py",  # file replies: _file_of, _plus_required
            "tests/engine/test_mutants.py",
            "tests/engine/test_sender_mutants.py",
        ],
    ),
    # The erase alone: its scans in batches, the lid cache and the glob escape (issue #18).
    "erase": Target(
        mutate=["engine/erase.py"],
        tests=[
            "tests/engine/test_erase.py",
            "tests/engine/test_mutants.py",
            "tests/engine/test_erase_mutants.py",
        ],
        deselect=["cluster"],
    ),
    # The spool's bookkeeping, its replay and the batcher, whose survivors go on to
    # test_outage.py's real processes (`--recheck --stages child`), and the spool's file
    # layer, whose failures tests/gateway/test_spool_faults.py injects.
    "spool": Target(
        mutate=[f"gateway/{name}.py" for name in SPOOL_FILES],
        tests=[
            "tests/gateway/test_spool.py",
            "tests/gateway/test_webhook.py",
            "tests/gateway/test_unsupported_redis.py",
            "tests/gateway/test_mutants.py",
            "tests/gateway/test_spool_mutants.py",
            "tests/gateway/test_spool_faults.py",
        ],
    ),
    # The first gateway and worker runs again, from a clean snapshot (the first ones mutated
    # files still being changed, and sorted survivors with the first kind_of): the gateway but
    # its spool (the "spool" target), and worker/ but its slot and fleet parts.
    "edge": Target(
        mutate=["gateway/*"],
        exclude=[f"gateway/{name}.py" for name in SPOOL_FILES],
        tests=[
            "tests/gateway/test_webhook.py",
            "tests/gateway/test_mutants.py",
            "tests/gateway/test_spool.py",
            "tests/gateway/test_replay_window.py",
            "tests/gateway/test_outage.py",
            "tests/gateway/test_unsupported_redis.py",
            "tests/gateway/test_runtime_stop.py",
            "tests/gateway/test_twins.py",
        ],
    ),
    "keeper": Target(
        mutate=["worker/*"],
        exclude=[
            "worker/consumer_slot.py",
            *(f"worker/{name}.py" for name in FLEET_FILES),
        ],
        tests=[
            "tests/worker/test_consumer_slot.py",
            "tests/worker/test_handler_seam.py",
            "tests/worker/test_commit_writes.py",
            "tests/worker/test_dead_letter_limits.py",
            "tests/engine/test_wiring.py",
            "tests/worker/test_mutants.py",
        ],
        deselect=["cluster"],
    ),
    # The queue's pending acks and a commit riding with the release (issue 19, fourth session):
    # run with `--names '*ack_later*' '*unacked*' '*commit_later*'`.
    "pending": Target(
        mutate=["shared/queue_consumer.py", "worker/handler.py"],
        tests=[
            "tests/worker/test_ack_later.py",
            "tests/worker/test_consumer_slot.py",
            "tests/worker/test_consumer_slot_mutants.py",
            "tests/worker/test_handler_seam.py",
            "tests/worker/test_commit_writes.py",
            "tests/worker/test_claim_pool.py",
            "tests/worker/test_mutants.py",
            "tests/worker/test_redis_restart.py",  # NOSCRIPT after a restart
            "tests/engine/test_light_path.py",
        ],
        deselect=["cluster"],
    ),
    # worker/'s "no tests" files of the first run (they run in the fleet's child processes),
    # the retries and `wsm dlq`, against the in-process tests written for them.
    "fleet": Target(
        mutate=[f"worker/{name}.py" for name in FLEET_FILES],
        tests=[
            "tests/worker/test_redis_retry.py",
            "tests/worker/test_dlq_cli.py",
            "tests/worker/test_fleet_parts.py",
            "tests/worker/test_consumer_slot.py",  # the slot's calls go through retry_until
            "tests/worker/test_dead_letter_limits.py",  # `wsm dlq list` on the cap
        ],
        deselect=["cluster"],
    ),
}

# file -> real-process tests that run it in child processes (for --child-tests).
CHILD_TESTS: dict[str, list[str]] = {
    "worker/lease_keeper.py": ["tests/worker/test_lease_keeper_fleet.py"],
    # `wsm dlq list | replay | drop` runs as a command in the fleet's dead-letter test.
    "worker/dlq_cli.py": ["tests/worker/test_fleet_dead_letters.py"],
    # The fleet's retries while Redis restarts under it.
    "worker/redis_retry.py": ["tests/worker/test_redis_restart.py"],
    # `wsm worker`'s fleet and child branches, and a process's serve(), run only in the fleet's
    # processes: one fleet test each (seconds per mutant; `--recheck --stages child --only`).
    "worker/cli.py": ["tests/worker/test_fleet_health.py::test_check_follows_the_fleet"],
    # `wsm gateway`'s refusals, its workers and its metrics directory: real gateway processes.
    "gateway/cli.py": ["tests/gateway/test_process.py"],
    "worker/process.py": [
        "tests/worker/test_fleet_shutdown.py"
        "::test_sigterm_finishes_in_flight_hands_back_the_rest_and_exits_0"
    ],
    # The spool's promises (nothing lost, in order, nothing twice) are proven with real
    # gateway processes, killed and restarted.
    **{
        f"gateway/{name}.py": ["tests/gateway/test_outage.py"]
        for name in ("spool", "spool_file", "replay", "batcher", "intake", "runtime", "redis_link")
    },
}

# A recheck that runs this long hangs (a mutant that never finishes a wait): killed by timeout.
RECHECK_TIMEOUT_S = 60

STATUS: dict[int | None, str] = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    36: "timeout",
}
STATUS.update({24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 34: "skipped"})


def snapshot(dest: Path, target: Target) -> None:
    shutil.rmtree(dest / "mutants", ignore_errors=True)  # never reuse another run's mutants
    dest.mkdir(parents=True, exist_ok=True)
    excluded = ["var", ".git", "mutants", "*.egg-info", ".mypy_cache", ".ruff_cache"]
    subprocess.run(
        ["rsync", "-a", "--delete", *(f"--exclude={e}" for e in excluded), f"{REPO}/", f"{dest}/"],
        check=True,
    )
    (dest / "sitecustomize.py").write_text(SITECUSTOMIZE, "utf-8")
    # A test file listed but not written yet would make pytest refuse to run.
    listed = ", ".join(json.dumps(x) for x in target.tests if (dest / x).exists())
    selection = f"[{listed}"
    if target.deselect:
        selection += ', "-k", ' + json.dumps(" and ".join(f"not {t}" for t in target.deselect))
    selection += "]"
    config = (
        "\n[tool.mutmut]\n"
        f"source_paths = {json.dumps(SOURCE_PATHS)}\n"
        f"only_mutate = {json.dumps(target.mutate)}\n"
        f"do_not_mutate = {json.dumps(target.exclude)}\n"
        f"also_copy = {json.dumps(ALSO_COPY)}\n"
        f"pytest_add_cli_args_test_selection = {selection}\n"
    )
    with (dest / "pyproject.toml").open("a", encoding="utf-8") as f:
        f.write(config)
    # mutants/ must exist before Python starts: a PYTHONPATH entry that does not exist yet is
    # cached as "nothing here" and `tests` would never be importable from it.
    (dest / "mutants").mkdir(exist_ok=True)


def environment(dest: Path) -> dict[str, str]:
    # Child processes started by tests import the mutated copy, never the editable install.
    return {**os.environ, "PYTHONPATH": str(dest / "mutants")}


def run_mutmut(dest: Path, max_children: int, names: list[str] | None = None) -> None:
    # Its own session: mutmut kills a mutant's run on timeout, and whatever that run had
    # started (each run has its own private redis-server) would be left behind.
    process = subprocess.Popen(
        ["nice", "-n", "10", "mutmut", "run", "--max-children", str(max_children), *(names or [])],
        cwd=dest,
        env=environment(dest),
        start_new_session=True,
    )
    try:
        process.wait()
    finally:
        end_session(process.pid)


def end_session(sid: int) -> None:
    """SIGKILL every process left in session `sid` (only ours: we started it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


def results(dest: Path) -> dict[str, dict[str, int | None]]:
    """mutant name -> exit code, per mutated file, from mutmut's .meta files."""
    found: dict[str, dict[str, int | None]] = {}
    for meta in sorted((dest / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text("utf-8"))
        codes = data.get("exit_code_by_key", {})
        if codes:
            found[str(meta.relative_to(dest / "mutants"))[: -len(".meta")]] = codes
    return found


def child_tests(dest: Path) -> None:
    """Run the "no tests" mutants of CHILD_TESTS' files against their real-process tests."""
    for path, codes in results(dest).items():
        tests = CHILD_TESTS.get(path)
        if not tests:
            continue
        for name, code in codes.items():
            if STATUS.get(code) != "no tests":
                continue
            env = {**environment(dest), "MUTANT_UNDER_TEST": name}
            run = subprocess.run(
                ["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q", *tests],
                cwd=dest / "mutants",
                env=env,
                capture_output=True,
                check=False,
            )
            verdict = "killed" if run.returncode else "survived"
            print(f"child-tests {verdict}: {name}", flush=True)
            record = dest / "child_results.json"
            done = json.loads(record.read_text("utf-8")) if record.exists() else {}
            done[name] = verdict
            record.write_text(json.dumps(done, indent=1), "utf-8")


def recheck(
    dest: Path,
    extra: list[str],
    parallel: int,
    kinds_wanted: set[str],
    stages_wanted: list[str],
    only: str = "*",
) -> None:
    """Run every survivor again, each in a fresh pytest process started with the mutant
    switched on, in up to three stages; the first that fails kills it:

    - "new": `extra`, the new tests/*/test_mutants.py (copied in from the tree).
    - "old": the tests mutmut mapped to its function. mutmut's runs fork a process that
      imported everything unmutated: a function run at import time (a precomputed answer, a
      module constant) never runs mutated there. A survivor killed here was such an artefact.
    - "child": CHILD_TESTS for its file, real-process tests whose children run the mutant.
    "old" and "child" are skipped for log/metric and message-text changes (no test reads a
    log line's wording or a rejection's prose; they are grouped in docs/testing.md).
    """
    stats = json.loads((dest / "mutants" / "mutmut-stats.json").read_text("utf-8"))
    mapped: dict[str, list[str]] = stats["tests_by_mangled_function_name"]
    for test in extra:
        shutil.copy2(REPO / test, dest / "mutants" / test)
    record = dest / "recheck_results.json"
    done: dict[str, str] = json.loads(record.read_text("utf-8")) if record.exists() else {}
    # With the child stage, the "no tests" mutants of CHILD_TESTS' files go too (like
    # --child-tests, but in parallel, with a timeout, and filtered by kind and --only).
    wanted = ("survived", "no tests") if "child" in stages_wanted else ("survived",)
    kinds = {name: kind for name, kind, _ in survivor_diffs(dest, wanted)}
    path_of = {name: path for path, codes in results(dest).items() for name in codes}
    stages: list[str] = [s for s in ("new", "old", "child") if s in stages_wanted]
    verdicts = {"old": "killed at import", "new": "killed by new test", "child": "killed by child"}

    def tests_for(name: str, stage: str) -> list[str]:
        if stage == "new":
            return extra
        if kinds.get(name) in ("log/metric", "message text"):
            return []
        if stage == "old":
            return sorted(mapped.get(name.partition("__mutmut_")[0], []))
        return CHILD_TESTS.get(path_of[name], [])

    running: list[tuple[str, str, subprocess.Popen[bytes], float]] = []

    def start(name: str, tests: list[str], stage: str) -> None:
        env = {**environment(dest), "MUTANT_UNDER_TEST": name}
        command = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q"]
        command += ["-p", "no:cacheprovider", *tests]
        process = subprocess.Popen(
            command,
            cwd=dest / "mutants",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # so a hung mutant's whole process group can be ended
        )
        running.append((name, stage, process, time.monotonic()))

    def finish(name: str, verdict: str) -> None:
        done[name] = verdict
        print(f"recheck {verdict}: {name}", flush=True)
        record.write_text(json.dumps(done, indent=1, ensure_ascii=False), "utf-8")

    def advance(name: str, stage: str) -> None:
        """Queue the next stage that has tests, or record the survivor."""
        for later in stages[stages.index(stage) + 1 :]:
            if tests_for(name, later):
                queue.insert(0, (name, later))  # finish a mutant before starting the next
                return
        finish(name, "survived")

    survived = {name for name, _, _ in survivor_diffs(dest)} if "child" in stages else set(kinds)
    queue: list[tuple[str, str]] = []
    for name, kind in kinds.items():
        if name not in survived and not (
            CHILD_TESTS.get(path_of[name]) and kind not in ("log/metric", "message text")
        ):
            continue  # a "no tests" mutant no child test can run stays "no tests"
        if name not in done and kind in kinds_wanted and matches(name, only):
            queue.append((name, stages[0]))
    while queue or running:
        while queue and len(running) < parallel:
            name, stage = queue.pop(0)
            tests = tests_for(name, stage)
            if tests:
                start(name, tests, stage)
            else:
                advance(name, stage)
        time.sleep(0.2)
        for entry in list(running):
            name, stage, process, started = entry
            code = process.poll()
            if code is None and time.monotonic() - started > RECHECK_TIMEOUT_S:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                running.remove(entry)
                finish(name, "timeout")
                continue
            if code is None:
                continue
            running.remove(entry)
            if code not in (0, 5):
                finish(name, verdicts[stage])
            else:
                advance(name, stage)


def matches(name: str, only: str) -> bool:
    """`only` is comma-separated globs over mutant names."""
    return any(fnmatch.fnmatch(name, glob) for glob in only.split(","))


def matrix(dest: Path, tests: list[str], kinds_wanted: set[str], only: str = "*") -> None:
    """Run `tests` (the new tests/*/test_mutants.py) against every survivor of the kinds
    wanted, in ONE pytest process (tests/mutation/mutant_matrix.py): what is killed there is
    killed by a new test. Recorded in recheck_results.json."""
    record = dest / "recheck_results.json"
    done: dict[str, str] = json.loads(record.read_text("utf-8")) if record.exists() else {}
    names = [
        n
        for n, kind, _ in survivor_diffs(dest)
        if kind in kinds_wanted and n not in done and matches(n, only)
    ]
    plugin = dest / "mutants" / "tests" / "mutation"
    plugin.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "mutant_matrix.py"):
        shutil.copy2(REPO / "tests" / "mutation" / name, plugin / name)
    for test in tests:
        shutil.copy2(REPO / test, dest / "mutants" / test)
    listing = dest / "matrix_mutants.txt"
    listing.write_text("\n".join(names) + "\n", "utf-8")
    env = {**environment(dest), "WSM_MUTANTS_FILE": str(listing), "MUTANT_UNDER_TEST": ""}
    command = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-q", "-rf", "--tb=no"]
    command += ["-p", "no:cacheprovider", "-p", "tests.mutation.mutant_matrix", *tests]
    run = subprocess.run(
        command, cwd=dest / "mutants", env=env, capture_output=True, text=True, check=False
    )
    killed = {
        names[int(index)]
        for index in re.findall(r"^FAILED \S+\[(?:.*-)?mutant(\d+)(?:-.*)?\]", run.stdout, re.M)
    }
    print(run.stdout.splitlines()[-1] if run.stdout else run.stderr[-2000:])
    for name in names:
        if name in killed:
            done[name] = "killed by new test"
    record.write_text(json.dumps(done, indent=1, ensure_ascii=False), "utf-8")
    print(f"matrix: {len(killed)} of {len(names)} survivors killed by {', '.join(tests)}")


def kind_of(removed: list[str], added: list[str]) -> str:
    """A first sort of a survivor by what its change touches (docs/testing.md groups by it;
    "logic" ones are looked at one by one)."""
    text = " ".join(removed + added)
    # A gauge's `.set(` only (upper-case module constants): a Redis client's `.set(` is logic
    # (the sender's lock expiry once hid in this kind).
    gauge_set = r"\b[A-Z][A-Z0-9_]+\.set\("
    if re.search(
        rf"\blog\.|logging|extra=|metrics\.|\.labels\(|\.inc\(|\.observe\(|{gauge_set}", text
    ):
        return "log/metric"
    strip = re.compile(r"b?(\"[^\"]*\"|'[^']*')|None")
    if [strip.sub("S", x) for x in removed] == [strip.sub("S", x) for x in added]:
        if re.search(r"raise |Error\(|Exception\(|Rejected\(|Invalid|TooLarge|Unavailable", text):
            return "message text"
        return "literal"
    ops = re.compile(r"<=|>=|<|>")
    if [ops.sub("OP", x) for x in removed] == [ops.sub("OP", x) for x in added]:
        return "boundary"
    digits = re.compile(r"\d+(\.\d+)?")
    if [digits.sub("N", x) for x in removed] == [digits.sub("N", x) for x in added]:
        return "number"
    return "logic"


def survivor_diffs(
    dest: Path, statuses: tuple[str, ...] = ("survived",)
) -> list[tuple[str, str, list[str]]]:
    """(name, kind, diff lines) of each survivor (after rechecks), or of each mutant in one of
    `statuses`."""
    verdicts: dict[str, str] = {}
    for extra in ("child_results.json", "recheck_results.json"):
        if (dest / extra).exists():
            verdicts.update(json.loads((dest / extra).read_text("utf-8")))
    here = Path.cwd()
    os.chdir(dest)  # mutmut reads its configuration from the working directory
    from mutmut.__main__ import get_diff_for_mutant

    found = []
    try:
        for path, codes in results(dest).items():
            for name, code in codes.items():
                if (verdicts.get(name) or STATUS.get(code)) not in statuses:
                    continue
                diff = get_diff_for_mutant(name, path=Path(path))
                lines = [x for x in diff.splitlines() if not x.startswith(("---", "+++"))]
                removed = [x[1:].strip() for x in lines if x.startswith("-")]
                added = [x[1:].strip() for x in lines if x.startswith("+")]
                shown = [f"-  {x}" for x in removed] + [f"+  {x}" for x in added]
                found.append((name, kind_of(removed, added), shown))
    finally:
        os.chdir(here)
    return found


def survivors(dest: Path) -> None:
    for name, kind, shown in survivor_diffs(dest):
        print(f"## {name} [{kind}]")
        print("\n".join(shown))


def summary(dest: Path) -> None:
    child = dest / "child_results.json"
    child_verdicts: dict[str, str] = json.loads(child.read_text("utf-8")) if child.exists() else {}
    child_verdicts = {n: {"killed": "killed by child"}.get(v, v) for n, v in child_verdicts.items()}
    rechecked = dest / "recheck_results.json"
    if rechecked.exists():
        for name, verdict in json.loads(rechecked.read_text("utf-8")).items():
            child_verdicts[name] = verdict
    total: collections.Counter[str] = collections.Counter()
    survivors: list[str] = []
    for path, codes in results(dest).items():
        counts: collections.Counter[str] = collections.Counter()
        for name, code in codes.items():
            status = child_verdicts.get(name) or STATUS.get(code, "suspicious")
            status = {"killed at import": "killed (fresh process)"}.get(status, status)
            if code is None:
                status = "not checked"
            counts[status] += 1
            if status == "survived":
                survivors.append(name)
        total.update(counts)
        print(f"{path}: {score_line(counts)}")
    print(f"TOTAL: {score_line(total)}")
    for name in survivors:
        print(f"survived: {name}")


def score_line(counts: collections.Counter[str]) -> str:
    """killed/(killed+survived): the score over mutants some test ran against."""
    killed = sum(v for k, v in counts.items() if k.startswith("killed")) + counts["timeout"]
    tested = killed + counts["survived"]
    score = f"{100 * killed / tested:.1f}%" if tested else "n/a"
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"score {score} ({parts})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--dest", type=Path, help="where the copy goes (default /tmp/wsm-mutmut/T)")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--summary", action="store_true", help="only summarise a finished run")
    parser.add_argument("--child-tests", action="store_true", help="see the module docstring")
    parser.add_argument(
        "--recheck",
        nargs="*",
        metavar="TEST_FILE",
        help="run survivors again in fresh processes, with these extra test files (see recheck)",
    )
    parser.add_argument("--parallel", type=int, default=2, help="rechecks at a time")
    parser.add_argument(
        "--kinds",
        default="logic,boundary,number,literal,log/metric,message text",
        help="which survivors to recheck (kind_of)",
    )
    parser.add_argument("--stages", default="new,old,child", help="which recheck stages")
    parser.add_argument(
        "--only", default="*", help="only mutants matching these globs (comma-separated)"
    )
    parser.add_argument(
        "--matrix", nargs="+", metavar="TEST_FILE", help="new tests against all survivors at once"
    )
    parser.add_argument("--survivors", action="store_true", help="list survivors with diffs")
    parser.add_argument(
        "--names",
        nargs="+",
        metavar="GLOB",
        help="run only the mutants matching these globs (mutmut's own filter)",
    )
    args = parser.parse_args()
    dest = args.dest or DEST / args.target
    if not (
        args.summary
        or args.child_tests
        or args.survivors
        or args.matrix
        or args.recheck is not None
    ):
        snapshot(dest, TARGETS[args.target])
        run_mutmut(dest, args.max_children, args.names)
    if args.child_tests:
        child_tests(dest)
    if args.recheck is not None:
        kinds = set(args.kinds.split(","))
        recheck(dest, args.recheck, args.parallel, kinds, args.stages.split(","), args.only)
    if args.matrix:
        matrix(dest, args.matrix, set(args.kinds.split(",")), args.only)
    if args.survivors:
        survivors(dest)
        return
    summary(dest)


if __name__ == "__main__":
    main()
