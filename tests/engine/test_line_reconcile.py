"""An agent's capacity after a crash between a handler's commit and its line step.

The handler commits the conversation's new state (agent cleared, or set) with its message, and
changes the agent's set only after the commit. A process killed in between used to leave the
set wrong for good: the agent stayed "full" with a conversation that was closed. The line's
maintenance now reconciles each agent's set with the conversations' own states."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

from engine import commands
from engine.state import State, load_state
from shared.keys import engine_keys_for
from tests.engine.harness import Harness
from tests.engine.line_support import ask_for_a_person
from tests.support.waha import text_message

ROOT = Path(__file__).resolve().parents[2]
ZECA = "5511900000000@c.us"
ANA = "5511900000001@c.us"
ZECA_TOKEN = f"default|{ZECA}"
ANA_TOKEN = f"default|{ANA}"


async def maintain_now(harness: Harness) -> None:
    """One pass of the line's maintenance, as the background loop runs it (its reconcile runs
    at most once per interval over all processes: drop that lock to run it now)."""
    coordinator = harness.service.coordinator
    await harness.redis.delete(coordinator.line.keys.reconcile_lock)
    await coordinator.maintain()
    await harness.drain()


async def zeca_with_maria_and_ana_waiting(harness: Harness) -> None:
    line = harness.service.coordinator.line
    await line.set_online("maria", "Maria", 1)
    await ask_for_a_person(harness, ZECA, "Zeca")
    await ask_for_a_person(harness, ANA, "Ana")
    assert await line.assignments(["maria"]) == {"maria": {ZECA_TOKEN}}
    assert await line.length("default") == 1  # Ana waits: Maria is full (one at a time)


async def state_of(harness: Harness, chat: str) -> State:
    keys = engine_keys_for(
        "default", chat, harness.settings.queue_shards, harness.settings.key_prefix
    )
    return (await load_state(harness.redis, keys.state)).state


async def test_commit_without_release_is_reconciled(aredis, key_prefix, waha, make_harness) -> None:
    """The close commits (Zeca closed, Maria cleared from his state) but the process dies before
    `line.release`: stood in for by a release that does nothing. Maria's set still holds Zeca and
    Ana is never taken, until the maintenance reconciles; then Ana gets Maria."""
    harness = make_harness(conversations_per_agent=1)
    await zeca_with_maria_and_ana_waiting(harness)
    line = harness.service.coordinator.line

    async def killed_before_release(*_: object) -> bool:
        return False

    line.release = killed_before_release  # type: ignore[method-assign]
    await harness.service.coordinator.queue.send(
        "default", ZECA, commands.CLOSE, {"by": "maria"}, event_id="close:zeca"
    )
    await harness.drain()
    assert await state_of(harness, ZECA) is State.CLOSED
    assert await line.assignments(["maria"]) == {"maria": {ZECA_TOKEN}}  # the leak
    del line.release  # the instance's stand-in goes: the class's release again

    await maintain_now(harness)
    assert await line.assignments(["maria"]) == {"maria": {ANA_TOKEN}}
    assert await state_of(harness, ANA) is State.AGENT
    assert waha.to(ANA)[-1] == "Maria vai te atender agora. 🙋"


CRASHING_CLOSE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import redis.asyncio as aioredis
    import respx
    from engine import commands
    from engine.waiting_line import WaitingLine
    from tests.engine.harness import FakeWaha, Harness, settings_for

    async def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)  # killed right after the commit

    async def main():
        url, prefix, chat = sys.argv[1:4]
        client = aioredis.Redis.from_url(url)
        with respx.mock(assert_all_called=False) as router:
            FakeWaha(router)
            harness = Harness(client, settings_for(prefix, url, conversations_per_agent=1))
            WaitingLine.release = die
            await harness.service.coordinator.queue.send(
                "default", chat, commands.CLOSE, {"by": "maria"}, event_id="close:" + chat
            )
            await harness.drain()
        sys.exit(3)  # not reached: the release kills the process

    asyncio.run(main())
    """
)


async def test_process_killed_between_commit_and_release(
    aredis, redis_url, key_prefix, waha, make_harness
) -> None:
    """A real process handles the close and is SIGKILLed at `line.release`, after its commit."""
    harness = make_harness(conversations_per_agent=1)
    await zeca_with_maria_and_ana_waiting(harness)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_CLOSE, redis_url, key_prefix, ZECA,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == -9, stderr.decode()[-2000:]
    line = harness.service.coordinator.line
    assert await state_of(harness, ZECA) is State.CLOSED  # the commit happened
    assert await line.assignments(["maria"]) == {"maria": {ZECA_TOKEN}}  # the release did not

    await maintain_now(harness)
    assert await line.assignments(["maria"]) == {"maria": {ANA_TOKEN}}
    assert await state_of(harness, ANA) is State.AGENT
    agents = {a.id: a.conversations for a in await line.agents()}
    assert agents == {"maria": 1}


async def test_commit_without_attach_counts_the_conversation(
    aredis, key_prefix, waha, make_harness
) -> None:
    """Maria writes to Ana directly (Ana is with the bot): the commit makes Ana's state `agent`
    with Maria, and the process dies before `line.attach`. Maria looks free and would get Zeca
    from the line on top of Ana; the reconcile counts Ana for her first."""
    harness = make_harness(conversations_per_agent=1)
    line = harness.service.coordinator.line
    await line.set_online("maria", "Maria", 1)
    await harness.say(ANA, "oi")

    async def killed_before_attach(*_: object) -> bool:
        return False

    line.attach = killed_before_attach  # type: ignore[method-assign]
    await harness.service.coordinator.queue.send(
        "default", ANA, commands.AGENT_MESSAGE,
        {"text": "Oi Ana, sou a Maria", "agent_id": "maria", "agent_name": "Maria"},
        event_id="agent:ana:1",
    )  # fmt: skip
    await harness.drain()
    del line.attach
    assert await state_of(harness, ANA) is State.AGENT
    assert await line.assignments(["maria"]) == {"maria": set()}  # the missing attach

    await maintain_now(harness)
    assert await line.assignments(["maria"]) == {"maria": {ANA_TOKEN}}
    for text in ("oi", "Zeca", "3"):
        await harness.webhook(text_message(ZECA, text))
    await harness.drain()
    await maintain_now(harness)
    assert await line.assignments(["maria"]) == {"maria": {ANA_TOKEN}}
    assert await state_of(harness, ZECA) is State.WAITING  # Maria is full: Zeca still waits
    assert await line.length("default") == 1


async def test_reconcile_keeps_what_the_states_agree_with(
    aredis, key_prefix, waha, make_harness
) -> None:
    """Consistent sets are left alone, and so is an assignment in flight (taken, its handler has
    not confirmed it yet: the state still says `waiting`)."""
    harness = make_harness(conversations_per_agent=2)
    coordinator = harness.service.coordinator
    line = coordinator.line
    await line.set_online("maria", "Maria", 1)
    await ask_for_a_person(harness, ZECA, "Zeca")
    await line.set_offline("maria", 2)  # Ana's handoff finds nobody free: she waits
    for text in ("oi", "Ana", "3"):
        await harness.webhook(text_message(ANA, text))
    await harness.drain()
    await line.set_online("maria", "Maria", 3)
    taken = await coordinator.take_next("maria")  # the assignment is queued, not handled
    assert taken is not None and taken.token == ANA_TOKEN
    assert await state_of(harness, ANA) is State.WAITING
    assert await coordinator.reconcile() == (0, 0)
    assert await line.assignments(["maria"]) == {"maria": {ZECA_TOKEN, ANA_TOKEN}}
    await harness.drain()
    assert await state_of(harness, ANA) is State.AGENT
    assert await coordinator.reconcile() == (0, 0)
    assert await line.assignments(["maria"]) == {"maria": {ZECA_TOKEN, ANA_TOKEN}}


async def test_unassign_refuses_a_conversation_that_joined_after_the_read(
    aredis, key_prefix
) -> None:
    """The reconcile read the counter, then a state saying "not with Maria"; if the conversation
    joins Maria's set after that read (taken, confirmed), that state says nothing about it."""
    from engine.waiting_line import WaitingLine

    line = WaitingLine(aredis, prefix=key_prefix, per_agent=3, default_handling_seconds=60)
    await line.set_online("maria", "Maria", 1)
    read_at = await line.counter()
    await line.attach("maria", "default", ZECA_TOKEN)  # joins after the read
    assert not await line.unassign("maria", ZECA_TOKEN, read_at)
    assert await line.assignments(["maria"]) == {"maria": {ZECA_TOKEN}}
    # A later pass (counter read after the join) may take it out.
    assert await line.unassign("maria", ZECA_TOKEN, await line.counter())
    assert await line.assignments(["maria"]) == {"maria": set()}
    # Stamps of conversations nobody has are forgotten.
    assert await line.prune_joined(["maria"]) == 1
    assert await aredis.hlen(line.keys.joined) == 0
