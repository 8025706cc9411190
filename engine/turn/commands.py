"""Commands to a conversation (`wsm.*`, engine/commands.py), queued in its own FIFO by the
operator API (an agent's reply, a close, a handback), by the waiting line (an assignment, a
"your place improved" check) and by the timers (a timeout)."""

from __future__ import annotations

from dataclasses import replace

from engine.metrics import WAITING_SECONDS
from engine.state import OPEN_STATES, State, Trigger, can
from engine.turn.customer import leave_team_question, line_text
from engine.turn.frame import ConversationTurn


async def agent_message(turn: ConversationTurn) -> None:
    text = str(turn.payload.get("text") or "")
    agent_id = str(turn.payload.get("agent_id") or "")
    agent_name = str(turn.payload.get("agent_name") or agent_id)
    if not text or not agent_id:
        return
    await agent_writes(turn, agent_id, agent_name)
    turn.reply(text, author=f"agent:{agent_id}")


async def agent_writes(turn: ConversationTurn, agent_id: str, agent_name: str) -> None:
    """An agent writes (a text, a file: engine/turn/media_send.py): the conversation becomes
    theirs, out of the line and away from any other agent."""
    if turn.before.state is State.WAITING:
        await turn.leave_line()
    if turn.state.agent_id and turn.state.agent_id != agent_id:
        turn.release_agent(handled=False)
    if turn.state.agent_id != agent_id:
        session, token = turn.conversation.session, turn.conversation.token

        async def attach() -> None:
            await turn.line.attach(agent_id, session, token)

        turn.after.append(attach)
    turn.state = turn.state.moved(
        Trigger.AGENT_WROTE,
        agent_id=agent_id,
        agent_name=agent_name,
        taken_at=turn.state.taken_at or turn.now,
        last_activity_at=turn.now,
    )


async def close_command(turn: ConversationTurn) -> None:
    # From paused a person of the business is talking there: no goodbye from the bot.
    await close(turn, Trigger.CLOSE, goodbye=turn.before.state is not State.PAUSED)


async def close(
    turn: ConversationTurn, trigger: Trigger, *, goodbye: bool, text_key: str = "goodbye"
) -> None:
    if not can(turn.state.state, trigger):
        return
    if turn.state.state is State.WAITING:
        await turn.leave_line()
    if turn.state.state is State.AGENT:
        # Closed for inactivity: the handling ended with the last message, not the idle wait
        # that followed (found by an audit: 30 idle minutes made every estimate 30 min longer).
        until = turn.state.last_activity_at if trigger is Trigger.INACTIVITY else 0
        turn.release_agent(handled=True, until=until)
    turn.state = turn.state.moved(trigger, closed_at=turn.now, step="")
    if goodbye:
        turn.reply(turn.texts.render(text_key))


async def handback(turn: ConversationTurn) -> None:
    if not can(turn.state.state, Trigger.HANDBACK):
        return
    if turn.state.state is State.WAITING:
        await turn.leave_line()
    if turn.state.state is State.AGENT:
        turn.release_agent(handled=True)
    turn.state = turn.state.moved(Trigger.HANDBACK, last_activity_at=turn.now)
    leave_team_question(turn)
    turn.reply(turn.texts.render("handback"))


async def assigned(turn: ConversationTurn) -> None:
    agent_id = str(turn.payload.get("agent_id") or "")
    agent_name = str(turn.payload.get("agent_name") or agent_id)
    session, token = turn.conversation.session, turn.conversation.token
    line = turn.line
    if turn.state.state is not State.WAITING:
        if turn.state.state is State.AGENT and turn.state.agent_id == agent_id:
            turn.after.append(lambda: line.confirm_taken(token))
            return
        # The customer left (or was closed) before the assignment reached them.

        async def give_back() -> None:
            await line.release(agent_id, session, token, None)

        turn.after.append(give_back)
        turn.slot_freed = True
        return
    entered_at = int(turn.payload.get("entered_at") or turn.state.line_entered_at)
    taken_at = int(turn.payload.get("taken_at") or turn.now)
    turn.state = turn.state.moved(
        Trigger.AGENT_TOOK,
        agent_id=agent_id,
        agent_name=agent_name,
        taken_at=taken_at,
        line_entered_at=0,
        line_position=0,
        line_notice_at=0,
        last_activity_at=turn.now,
    )
    turn.reply(turn.texts.render("line_taken", agent=agent_name))
    waited = max(0.0, (taken_at - entered_at) / 1000)

    async def confirm() -> None:
        await line.confirm_taken(token)
        WAITING_SECONDS.observe(waited)

    turn.after.append(confirm)


async def line_notice(turn: ConversationTurn) -> None:
    if turn.state.state is not State.WAITING:
        return
    found = await turn.line.locate(turn.conversation.session, turn.conversation.token)
    if found is None or not turn.line.is_open(turn.now):
        return  # closed: no minutes; their place is told again at the opening
    team, position = found
    if turn.payload.get("opening"):
        turn.reply(await line_text(turn, "line_opened", position, team))
        turn.state = replace(turn.state, line_position=position, line_notice_at=turn.now)
        return
    if position >= (turn.state.line_position or position + 1):
        return
    interval_ms = turn.config.notice_interval_seconds * 1000
    if position != 1 and turn.now - turn.state.line_notice_at < interval_ms:
        return
    if position == 1:
        # With nobody of the line's team online, not the promise of "in a moment".
        nobody = await turn.line.online_count(team) == 0
        turn.reply(turn.texts.render("line_front_nobody" if nobody else "line_front"))
    else:
        turn.reply(await line_text(turn, "line_position", position, team))
    turn.state = replace(turn.state, line_position=position, line_notice_at=turn.now)


# How long a waiting customer's timer waits when their business does not open within the
# hours' search (engine/hours.py, SEARCH_DAYS).
NO_OPENING_RECHECK_MS = 24 * 3600 * 1000


async def timeout(turn: ConversationTurn) -> None:
    config = turn.config
    state = turn.state
    if state.state is State.WAITING:
        # Only open time counts: a customer who asked at night is not timed out by morning.
        hours, limit_ms = turn.line.hours, config.waiting_timeout_seconds * 1000
        entered = state.line_entered_at
        waited = turn.now - entered if hours is None else hours.open_ms_between(entered, turn.now)
        if waited >= limit_ms:
            await close(turn, Trigger.LINE_TIMEOUT, goodbye=True, text_key="line_timeout")
        elif hours is not None:
            # The timer is set by open-or-not time; move it to when the open time is up. A
            # business that does not open within the hours' search (a file with no hours)
            # is looked at again in a day, not at every pass of the timers (a year's search
            # each time, per customer in line).
            due = hours.deadline(entered, limit_ms) or turn.now + NO_OPENING_RECHECK_MS
            token, timers = turn.conversation.token, turn.tools.index.timers

            async def rearm() -> None:
                await turn.redis.zadd(timers, {token: due}, xx=True, gt=True)

            turn.after.append(rearm)
    elif (
        state.state in OPEN_STATES
        and turn.now - state.last_activity_at >= config.inactivity_close_seconds * 1000
    ):
        # Paused: a person of the business is talking there; the bot stays quiet.
        await close(turn, Trigger.INACTIVITY, goodbye=state.state is not State.PAUSED)
    # Not due after all (activity since): the timer was moved by that activity.
