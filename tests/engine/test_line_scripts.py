"""The waiting line's scripts (line_enter, line_leave, line_take, line_release, line_rehome) on a
real Redis."""

from __future__ import annotations

import pytest

from engine.agent.calendar import Team
from engine.waiting_line import AgentAtCapacity, AgentOffline, WaitingLine
from shared.keys import LineKeys


def line(aredis, prefix: str, per_agent: int = 2) -> WaitingLine:
    return WaitingLine(aredis, prefix=prefix, per_agent=per_agent, default_handling_seconds=120)


async def test_line_enter_is_fifo_and_a_repeat_keeps_the_place(aredis, key_prefix) -> None:
    wl = line(aredis, key_prefix)
    # Same millisecond for all: the tie-breaker keeps arrival order.
    assert await wl.enter("s1", "s1|a@c.us", 1000) == (1, 1000)
    assert await wl.enter("s1", "s1|b@c.us", 1000) == (2, 1000)
    assert await wl.enter("s1", "s1|c@c.us", 1000) == (3, 1000)
    # A redelivered message entering again does not move the customer to the back.
    assert await wl.enter("s1", "s1|a@c.us", 5000) == (1, 1000)
    # Lines are per session.
    assert await wl.enter("s2", "s2|z@c.us", 2000) == (1, 2000)
    assert [w.token for w in await wl.members("s1")] == ["s1|a@c.us", "s1|b@c.us", "s1|c@c.us"]
    assert await wl.sessions() == ["s1", "s2"]


async def test_line_leave_moves_everyone_behind_up(aredis, key_prefix) -> None:
    wl = line(aredis, key_prefix)
    for n, chat in enumerate("abcd"):
        await wl.enter("s", f"s|{chat}", 1000 + n)
    assert await wl.leave("s", "s|b") == 2
    assert await wl.leave("s", "s|b") == 0  # a repeat changes nothing
    assert [(w.token, w.position) for w in await wl.members("s")] == [
        ("s|a", 1), ("s|c", 2), ("s|d", 3),
    ]  # fmt: skip
    assert await wl.position("s", "s|d") == 3
    assert await wl.position("s", "s|b") is None


async def test_line_rehome_moves_a_teams_line_no_business_uses_into_the_plain_line(
    aredis, key_prefix
) -> None:
    """Each keeps when they entered (their place among the plain line's), one in both lines
    keeps the plain line's place, and the team line is gone; a team in use is left alone."""
    wl = line(aredis, key_prefix)
    await wl.enter("s", "s|old@c.us", 1000, team="financeiro")
    await wl.enter("s", "s|plain@c.us", 2000)
    await wl.enter("s", "s|new@c.us", 3000, team="financeiro")
    await wl.enter("s", "s|both@c.us", 500)
    await wl.enter("s", "s|both@c.us", 4000, team="financeiro")
    assert await wl.rehome_stray_lines() == 3  # no business here has teams
    assert [(w.token, w.entered_at, w.team) for w in await wl.members("s")] == [
        ("s|both@c.us", 500, ""), ("s|old@c.us", 1000, ""), ("s|plain@c.us", 2000, ""),
        ("s|new@c.us", 3000, ""),
    ]  # fmt: skip
    assert await aredis.exists(wl.line_key("s", "financeiro")) == 0
    assert await aredis.smembers(wl.keys.team_lines) == set()
    assert await wl.rehome_stray_lines() == 0

    teams = (Team("recepcao", "Recepção"), Team("financeiro", "Financeiro"))
    with_teams = WaitingLine(
        aredis, prefix=key_prefix, per_agent=2, default_handling_seconds=120, teams=teams
    )
    await with_teams.enter("s", "s|ana@c.us", 5000, team="financeiro")
    assert await with_teams.rehome_stray_lines() == 0
    assert await with_teams.locate("s", "s|ana@c.us") == ("financeiro", 1)


async def test_line_take_gives_the_longest_waiting_over_sessions(aredis, key_prefix) -> None:
    wl = line(aredis, key_prefix, per_agent=2)
    await wl.enter("s1", "s1|late", 3000)
    await wl.enter("s2", "s2|early", 1000)
    await wl.enter("s2", "s2|middle", 2000)
    with pytest.raises(AgentOffline):
        await wl.take("ana", ["s1", "s2"], 4000)
    await wl.set_online("ana", "Ana", 10)
    first = await wl.take("ana", ["s1", "s2"], 4000)
    assert first is not None
    assert (first.token, first.agent_name, first.entered_at) == ("s2|early", "Ana", 1000)
    assert first.waited_seconds == 3.0
    second = await wl.take("ana", ["s1", "s2"], 4000)
    assert second is not None and second.token == "s2|middle"
    with pytest.raises(AgentAtCapacity):
        await wl.take("ana", ["s1", "s2"], 4000)
    keys = LineKeys(key_prefix)
    assert await aredis.smembers(keys.agent_conversations("ana")) == {b"s2|early", b"s2|middle"}
    assert {t.token for t in await wl.pending_takes()} == {"s2|early", "s2|middle"}
    assert await wl.length("s2") == 0 and await wl.length("s1") == 1
    await wl.set_offline("ana", 5000)
    await wl.release("ana", "s2", "s2|early", 30.0)
    with pytest.raises(AgentOffline):
        await wl.take("ana", ["s1"], 6000)


async def test_line_take_a_given_conversation_and_empty_line(aredis, key_prefix) -> None:
    wl = line(aredis, key_prefix)
    await wl.set_online("bo", None, 1)
    assert await wl.take("bo", ["s"], 10) is None
    await wl.enter("s", "s|x", 100)
    await wl.enter("s", "s|y", 200)
    taken = await wl.take("bo", ["s"], 300, token="s|y")
    assert taken is not None and taken.token == "s|y" and taken.agent_name == "bo"
    assert [w.token for w in await wl.members("s")] == ["s|x"]


async def test_line_release_frees_the_slot_and_records_handling_once(aredis, key_prefix) -> None:
    wl = line(aredis, key_prefix, per_agent=1)
    await wl.set_online("ana", "Ana", 1)
    await wl.enter("s", "s|x", 100)
    taken = await wl.take("ana", ["s"], 200)
    assert taken is not None
    assert await wl.release("ana", "s", "s|x", 240.0) is True
    assert await wl.release("ana", "s", "s|x", 240.0) is False  # a repeat records nothing
    assert await wl.pending_takes() == []
    assert await wl.average_handling_seconds("s") == 240.0
    # One agent, one slot, 240 s per conversation: the 3rd in line waits about 12 min.
    assert await wl.estimate_minutes("s", 3) == 12
    [agent] = await wl.free_agents()
    assert agent.id == "ana" and agent.conversations == 0


async def test_estimate_uses_the_default_without_samples(aredis, key_prefix) -> None:
    wl = line(aredis, key_prefix, per_agent=2)
    # Nobody online: counted as one slot, 120 s default per conversation.
    assert await wl.estimate_minutes("s", 1) == 2
    await wl.set_online("a", "A", 1)
    await wl.set_online("b", "B", 1)
    assert await wl.estimate_minutes("s", 4) == 2


async def test_take_and_attach_stamp_when_a_conversation_joined_an_agent(
    aredis, key_prefix
) -> None:
    """The reconcile's guard: every join of an agent's set records the line's counter at that
    moment, so a state read before the join cannot take the conversation away again."""
    wl = line(aredis, key_prefix)
    await wl.set_online("ana", "Ana", 1)
    await wl.enter("s", "s|x", 100)
    before_take = await wl.counter()
    assert await wl.take("ana", ["s"], 200) is not None
    taken_at = int(await aredis.hget(wl.keys.joined, "s|x"))
    assert taken_at > before_take
    assert await wl.attach("ana", "s", "s|y") is True
    assert await wl.attach("ana", "s", "s|y") is False  # already hers: counted once
    assert int(await aredis.hget(wl.keys.joined, "s|y")) > taken_at
    assert await wl.assignments(["ana"]) == {"ana": {"s|x", "s|y"}}
    # Released: the stamp goes with the next prune, not before (a prune keeps held ones).
    await wl.release("ana", "s", "s|x", None)
    assert await wl.prune_joined(["ana"]) == 1
    assert await aredis.hkeys(wl.keys.joined) == [b"s|y"]
