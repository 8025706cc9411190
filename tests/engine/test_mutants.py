"""Tests written to kill mutants that survived the mutation run (docs/testing.md lists each one
and the mutant it kills). Each asserts a behaviour of the engine, not a line of code."""

from __future__ import annotations

import pytest

from engine.state import ConversationState, InvalidTransition, State, Trigger, next_state

# --- engine/state.py ------------------------------------------------------------------------


def test_a_state_hash_missing_some_fields_keeps_every_field_it_has() -> None:
    """A hash written with fewer fields (an older version of the code, or a field added since)
    still yields every field it does have, wherever the missing ones sit in the order.
    Kills: `continue` -> `break` in from_hash (every field after the first missing one lost)."""
    raw = {b"state": b"agent", b"agent_id": b"a7", b"taken_at": b"1700", b"version": b"9"}
    state = ConversationState.from_hash(raw)
    assert state == ConversationState(state=State.AGENT, agent_id="a7", taken_at=1700, version=9)


def test_empty_values_in_a_state_hash_read_as_the_defaults() -> None:
    """An empty `collected` is no collected data (not a JSON error) and an empty number is 0.
    Kills: `orjson.loads(value) if value` -> always loads, and `int(value or 0)` -> `or 1`."""
    raw = {b"state": b"bot", b"collected": b"", b"line_position": b"", b"version": b""}
    state = ConversationState.from_hash(raw)
    assert state == ConversationState(state=State.BOT)
    assert state.collected == {}
    assert (state.line_position, state.version) == (0, 0)


def test_a_refused_transition_says_from_where_and_on_what() -> None:
    """A caller catching InvalidTransition (a stale agent command) can tell what was refused.
    Kills: the message and the `state`/`trigger` attributes replaced by None."""
    with pytest.raises(InvalidTransition) as refused:
        next_state(State.CLOSED, Trigger.AGENT_TOOK)
    assert (refused.value.state, refused.value.trigger) == (State.CLOSED, Trigger.AGENT_TOOK)
    assert "'closed'" in str(refused.value)
    assert "'agent_took'" in str(refused.value)
