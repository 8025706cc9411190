"""Mutate the guards of the queue's Lua scripts, one at a time, and run each script's own tests
against each mutant (`make mutate-lua`).

A guard is a condition about the conversation's fence, its state or the head of a list (the
message or reply the caller claims to be working on): who may commit, retry, release, send.
mutmut does not read Lua, so the rules are written here, by hand:

- `flip`:   a comparison in a guard negated (`==` <-> `~=`, `<` <-> `>=`, `>` <-> `<=`);
- `not`:    a guard's `not` dropped (`if not leased_meta(...)` -> `if leased_meta(...)`);
- `return`: a guard's `return` dropped, so the script carries on past the guard;
- `bump`:   a fence drawn from the counter replaced by the old fence (no bump).

Work happens in a copy of the tree (`--dest`, default /tmp/wsm-lua-guards): the copy's script
is replaced by the mutant, the script's tests run in the copy (`pytest -x`), and the script is
restored. A mutant is killed when a test fails. Prints one line per mutant and a summary;
exits 1 when a mutant survived that is not in EXPLAINED (docs/testing.md says why each of
those is equivalent or harmless).

    python tests/mutation/lua_guards.py                 # every script in TESTS
    python tests/mutation/lua_guards.py ack_message     # some of them
    python tests/mutation/lua_guards.py --list          # the mutants, without running anything
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path("shared/scripts")

# script (or lib/<name>) -> the tests that exercise it. Libraries are tested through every
# script that includes them.
TESTS: dict[str, list[str]] = {
    "enqueue_event": [
        "tests/shared/test_enqueue_event_script.py",
        "tests/gateway/test_mutants.py",
        "tests/gateway/test_receipts.py",
    ],
    "claim_conversation": [
        "tests/worker/test_claim_conversation_script.py",
        "tests/worker/test_mutants.py",
    ],
    "ack_message": [
        "tests/worker/test_ack_message_script.py",
        "tests/worker/test_commit_writes.py",
        "tests/worker/test_mutants.py",
    ],
    # The ack's guards themselves (ack_message and ack_messages both run them).
    "lib/ack": [
        "tests/worker/test_ack_message_script.py",
        "tests/worker/test_commit_writes.py",
        "tests/worker/test_mutants.py",
        "tests/worker/test_ack_later.py",
    ],
    "extend_lease": ["tests/worker/test_extend_lease_script.py"],
    "release_conversation": ["tests/worker/test_release_conversation_script.py"],
    "release_and_take": [
        "tests/worker/test_release_conversation_script.py",
        "tests/worker/test_consumer_slot_mutants.py",
    ],
    "fail_message": [
        "tests/worker/test_fail_message_script.py",
        "tests/worker/test_dead_letter_limits.py",
        "tests/worker/test_mutants.py",
    ],
    "reap_expired_lease": [
        "tests/worker/test_reap_expired_lease_script.py",
        "tests/worker/test_dead_letter_limits.py",
        "tests/worker/test_mutants.py",
    ],
    "promote_delayed": [
        "tests/worker/test_promote_delayed_script.py",
        "tests/worker/test_mutants.py",
    ],
    "replay_dead_letter": ["tests/worker/test_replay_dead_letter_script.py"],
    "replay_outbox_dead": [
        "tests/worker/test_replay_outbox_dead_script.py",
        "tests/worker/test_dlq_outbox_cli.py",
    ],
    "reclaim_stale_claims": ["tests/worker/test_reclaim_stale_claims_script.py"],
    "outbox_sent": [
        "tests/engine/test_outbox_scripts.py",
        "tests/engine/test_history_meta_expiry.py",
    ],
    "history_fact": ["tests/engine/test_light_path.py", "tests/engine/test_conversations.py"],
    "outbox_dead": [
        "tests/engine/test_outbox_scripts.py",
        "tests/engine/test_history_meta_expiry.py",
        "tests/engine/test_dead_reply_echo.py",
    ],
    "outbox_dead_delivered": ["tests/engine/test_dead_reply_echo.py"],
    "outbox_retry": ["tests/engine/test_outbox_scripts.py"],
    "outbox_settle": ["tests/engine/test_outbox_scripts.py"],
    "send_begin": ["tests/engine/test_outbox_scripts.py", "tests/engine/test_sender_lock.py"],
    "send_mark": ["tests/engine/test_outbox_scripts.py"],
    "replay_booking_hook_dead": ["tests/worker/test_dlq_booking_cli.py"],
    "send_lock_renew": ["tests/engine/test_outbox_scripts.py", "tests/engine/test_sender_lock.py"],
    "send_abort": ["tests/engine/test_outbox_scripts.py", "tests/engine/test_sender_lock.py"],
    "erase_conversation": ["tests/engine/test_erase.py", "tests/engine/test_mutants.py"],
    "erase_markers": ["tests/engine/test_erase.py", "tests/engine/test_mutants.py"],
    "erase_calendar": ["tests/engine/test_erase.py", "tests/engine/test_erase_leftovers.py"],
    "line_take": ["tests/engine/test_line_scripts.py"],
    "lib/fence": [
        "tests/worker/test_claim_conversation_script.py",
        "tests/worker/test_extend_lease_script.py",
        "tests/worker/test_release_conversation_script.py",
        "tests/worker/test_fail_message_script.py",
        "tests/worker/test_reap_expired_lease_script.py",
        "tests/worker/test_promote_delayed_script.py",
        "tests/worker/test_mutants.py",
    ],
    "lib/outbox": ["tests/engine/test_outbox_scripts.py"],
    # A status only moves forward (outbox_sent's early ack, the gateway's receipts).
    "lib/status": [
        "tests/shared/test_delivery_status.py",
        "tests/shared/test_enqueue_event_script.py",
        "tests/engine/test_outbox_scripts.py",
    ],
    "lib/turn_end": [
        "tests/worker/test_release_conversation_script.py",
        "tests/worker/test_fail_message_script.py",
        "tests/worker/test_reap_expired_lease_script.py",
    ],
}

# What makes a condition a guard: the fence, the queue or send state, a list's head, the
# holder, the lease deadline, the "already done" markers.
GUARD_TERMS = re.compile(
    r"fence|state|leased|delayed|idle|ready|busy|LINDEX|head|owner|lease_until|last_ack|acked"
    r"|live|EXISTS|HEXISTS|outbox_head|leased_meta|message_id|mid|lock|holder|meta|deadline"
)
FLIPS = {"==": "~=", "~=": "==", "<=": ">", ">=": "<", "<": ">=", ">": "<="}
COMPARISON = re.compile(r"==|~=|<=|>=|(?<![-<>=~])<(?![=<])|(?<![-<>=~])>(?![=>])")

# Mutant.key -> why it may survive (the full reasoning is in docs/testing.md). None today:
# the last one (a fenced-out ack answering -1 rather than 0) is caught since the ack's guards
# moved into lib/ack.lua and test_ack_later.py runs against them.
EXPLAINED: dict[str, str] = {}


@dataclass(frozen=True)
class Mutant:
    script: str
    line: int  # 1-based
    rule: str
    before: str
    after: str

    @property
    def ident(self) -> str:
        return f"{self.script}:{self.line}:{self.rule}"

    @property
    def key(self) -> str:
        """What EXPLAINED is keyed by: stable when lines above it move."""
        return f"{self.script}|{self.rule}|{self.before.strip()}"


def condition_lines(lines: list[str]) -> set[int]:
    """0-based indexes of the lines that are part of a condition: `if`/`elseif` up to its
    `then`, and `local x = <comparison>` (a guard computed first, tested later)."""
    found: set[int] = set()
    open_if = False
    for i, line in enumerate(lines):
        code = line.split("--", 1)[0].strip()
        if code.startswith(("if ", "elseif ")) or open_if:
            found.add(i)
            open_if = re.search(r"\bthen\b", code) is None
        elif re.match(r"local \w+ = .*(==|~=|<|>)", code) or (
            i - 1 in found
            and (
                lines[i - 1].split("--", 1)[0].rstrip().endswith(("and", "or"))
                or code.startswith(("and ", "or "))
            )
        ):
            found.add(i)
    return found


def mutants_of(script: str, source: str) -> list[Mutant]:
    lines = source.splitlines(keepends=True)
    out: list[Mutant] = []
    for i in sorted(condition_lines(lines)):
        line = lines[i]
        code, _, comment = line.partition("--")
        if not GUARD_TERMS.search(code):
            continue
        for n, match in enumerate(COMPARISON.finditer(code)):
            flipped = code[: match.start()] + FLIPS[match.group()] + code[match.end() :]
            after = flipped + ("--" + comment if comment else "")
            out.append(Mutant(script, i + 1, f"flip{n}", line, after))
        if re.search(r"\bnot\s", code):
            dropped = re.sub(r"\bnot\s+", "", code, count=1)
            after = dropped + ("--" + comment if comment else "")
            out.append(Mutant(script, i + 1, "not", line, after))
        # The guard's block: a `return` at the block's own level is the guard's answer.
        if code.strip().startswith(("if ", "elseif ")):
            j = i
            if not lines[j].split("--", 1)[0].strip().endswith(("then", "and", "or")):
                continue  # a one-line `if ... then ... end`: no block to look into
            while not lines[j].split("--", 1)[0].strip().endswith("then"):
                j += 1
            indent = len(lines[j + 1]) - len(lines[j + 1].lstrip())
            k = j + 1
            while k < len(lines) and (
                not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) >= indent
            ):
                text = lines[k].strip()
                if text.startswith("return") and len(lines[k]) - len(lines[k].lstrip()) == indent:
                    kept = " " * indent + "do end -- mutant: guard's return dropped\n"
                    out.append(Mutant(script, k + 1, "return", lines[k], kept))
                    break
                k += 1
    # The fence bump: a new lease or a reaping must draw a fence above the old one.
    for i, line in enumerate(lines):
        code, _, comment = line.partition("--")
        bump = re.search(r"draw_fence\(\w+, (.+)\)\s*$", code)
        if bump and not code.lstrip().startswith("local function"):
            after = code[: bump.start()] + bump.group(1) + "\n"
            out.append(Mutant(script, i + 1, "bump", line, after))
    return out


def apply(source: str, mutant: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    assert lines[mutant.line - 1] == mutant.before, mutant.ident
    lines[mutant.line - 1] = mutant.after
    return "".join(lines)


def snapshot(dest: Path) -> None:
    excluded = ["var", ".git", "mutants", "*.egg-info", ".mypy_cache", ".ruff_cache"]
    subprocess.run(
        ["rsync", "-a", "--delete", *(f"--exclude={e}" for e in excluded), f"{REPO}/", f"{dest}/"],
        check=True,
    )


# A run this long has hung. Seen once in a while on a loaded machine even without a mutant
# (an async test waiting forever before its first Redis command), so a hung run is tried once
# more before it counts; one that hangs again counts as killed, as mutmut counts a timeout.
RUN_TIMEOUT_S = 240
TIMEOUT = -1


def run_tests(dest: Path, tests: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(dest)}  # the copy, never the editable install
    command = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-x", "-q"]
    command += ["-p", "no:cacheprovider", *tests]
    for _ in range(2):
        process = subprocess.Popen(
            command,
            cwd=dest,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a hung run is ended with everything it started
        )
        try:
            return process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return TIMEOUT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scripts", nargs="*", help="names from TESTS (default: all)")
    parser.add_argument("--dest", type=Path, default=Path("/tmp/wsm-lua-guards"))
    parser.add_argument("--list", action="store_true", help="list the mutants only")
    parser.add_argument("--no-snapshot", action="store_true", help="reuse the copy in --dest")
    args = parser.parse_args()
    names = args.scripts or list(TESTS)
    unknown = [n for n in names if n not in TESTS]
    if unknown:
        parser.error(f"no tests listed for {unknown}")

    if not args.list and not args.no_snapshot:
        snapshot(args.dest)
    root = REPO if args.list else args.dest
    killed: list[Mutant] = []
    survived: list[Mutant] = []
    for name in names:
        path = root / SCRIPTS / f"{name}.lua"
        original = path.read_text("utf-8")
        mutants = mutants_of(name, original)
        if args.list:
            for m in mutants:
                print(f"{m.ident}: {m.before.strip()}  ->  {m.after.strip()}")
            continue
        if run_tests(args.dest, TESTS[name]) != 0:
            print(f"{name}: its tests fail on the unmutated copy; skipped", flush=True)
            continue
        try:
            for m in mutants:
                path.write_text(apply(original, m), "utf-8")
                code = run_tests(args.dest, TESTS[name])
                verdict = "timeout" if code == TIMEOUT else "killed" if code else "SURVIVED"
                (survived if verdict == "SURVIVED" else killed).append(m)
                note = f"  ({EXPLAINED[m.key]})" if m.key in EXPLAINED else ""
                print(f"{verdict:8} {m.ident}: {m.after.strip()}{note}", flush=True)
        finally:
            path.write_text(original, "utf-8")
    if args.list:
        return 0
    print(f"\n{len(killed)} killed, {len(survived)} survived of {len(killed) + len(survived)}")
    unexplained = [m for m in survived if m.key not in EXPLAINED]
    for m in unexplained:
        print(f"unexplained survivor: {m.ident}: {m.before.strip()} -> {m.after.strip()}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    raise SystemExit(main())
