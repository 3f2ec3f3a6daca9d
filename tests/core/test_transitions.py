"""The transition table: forwards only, complete where it should be, and strict
where it is not."""

from __future__ import annotations

import pytest

from wslifecycle import ClosingStep, Input, InvalidTransition, LifecycleError, State
from wslifecycle.transitions import CLOSING_STEPS, TRANSITIONS, next_closing_step, next_state


def test_rank_orders_the_states() -> None:
    """OPEN < ACTIVE < DRAINING < CLOSED, ranks 0 to 3."""
    assert [s.rank for s in (State.OPEN, State.ACTIVE, State.DRAINING, State.CLOSED)] == [
        0,
        1,
        2,
        3,
    ]
    assert sorted(State, key=lambda s: s.rank) == list(State)


@pytest.mark.parametrize(("pair", "target"), list(TRANSITIONS.items()), ids=str)
def test_no_transition_goes_backwards(pair: tuple[State, Input], target: State) -> None:
    """Every entry of the table keeps or raises the state's rank."""
    state, _ = pair
    assert target.rank >= state.rank


def test_closed_maps_only_to_closed() -> None:
    """CLOSED is terminal: every input it accepts leaves it CLOSED."""
    closed_rows = {pair: target for pair, target in TRANSITIONS.items() if pair[0] is State.CLOSED}
    assert closed_rows
    assert set(closed_rows.values()) == {State.CLOSED}


def test_every_input_is_legal_somewhere_and_every_state_has_rows() -> None:
    """No Input and no State is dead weight in the table."""
    assert {input_ for _, input_ in TRANSITIONS} == set(Input)
    assert {state for state, _ in TRANSITIONS} == set(State)


def test_open_leads_only_to_active_or_closed() -> None:
    """From OPEN the upgrade is accepted (ACTIVE) or the connection ends (CLOSED)."""
    targets = {t for (s, i), t in TRANSITIONS.items() if s is State.OPEN}
    assert targets == {State.ACTIVE, State.CLOSED}
    assert TRANSITIONS[State.OPEN, Input.UPGRADE_ACCEPTED] is State.ACTIVE


def test_graceful_inputs_from_active_lead_to_draining() -> None:
    """Close, peer close, handler error, protocol error and drain start teardown."""
    for input_ in (
        Input.CLOSE,
        Input.PEER_CLOSE,
        Input.HANDLER_ERROR,
        Input.PROTOCOL_ERROR,
        Input.DRAIN,
        Input.HANDLER_RETURNED,
    ):
        assert next_state(State.ACTIVE, input_) is State.DRAINING
    for input_ in (Input.HEARTBEAT_TIMEOUT, Input.TERMINATE, Input.TRANSPORT_LOST):
        assert next_state(State.ACTIVE, input_) is State.CLOSED


@pytest.mark.parametrize(("pair", "target"), list(TRANSITIONS.items()), ids=str)
def test_next_state_reads_the_table(pair: tuple[State, Input], target: State) -> None:
    """next_state returns exactly the table's entry."""
    assert next_state(*pair) is target


MISSING = [(s, i) for s in State for i in Input if (s, i) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "input_"), MISSING, ids=str)
def test_missing_pairs_raise_invalid_transition(state: State, input_: Input) -> None:
    """A pair absent from the table raises, carrying the state and the input."""
    with pytest.raises(InvalidTransition) as info:
        next_state(state, input_)
    assert info.value.state is state
    assert info.value.input is input_
    assert str(info.value) == f"no transition from {state} on {input_}"
    assert isinstance(info.value, LifecycleError)


def test_known_missing_pairs() -> None:
    """Sending before the upgrade, re-accepting and resurrecting are all missing."""
    assert (State.OPEN, Input.SEND) in MISSING
    assert (State.ACTIVE, Input.UPGRADE_ACCEPTED) in MISSING
    assert (State.DRAINING, Input.SEND) in MISSING
    assert (State.CLOSED, Input.UPGRADE_ACCEPTED) in MISSING
    assert (State.ACTIVE, Input.CHANNELS_RELEASED) in MISSING


def test_reading_pauses_and_resumes_without_leaving_a_state() -> None:
    """Pausing or resuming reading never moves a connection (OPEN: misuse)."""
    for input_ in (Input.READING_PAUSED, Input.READING_RESUMED):
        for state in (State.ACTIVE, State.DRAINING, State.CLOSED):
            assert next_state(state, input_) is state
        assert (State.OPEN, input_) in MISSING


# ------------------------------------------------------- DRAINING's own steps

STEP_ORDER = list(ClosingStep)


@pytest.mark.parametrize(("pair", "target"), list(CLOSING_STEPS.items()), ids=str)
def test_closing_steps_only_go_forwards(
    pair: tuple[ClosingStep, Input], target: ClosingStep
) -> None:
    """Every closing step leads to itself or a later step (the enum's order)."""
    step, _ = pair
    assert STEP_ORDER.index(target) >= STEP_ORDER.index(step)
    assert next_closing_step(*pair) is target


def test_a_missing_closing_step_raises_with_the_step_and_the_input() -> None:
    """COMPLETE accepts nothing: the error names the step and the input, like next_state's."""
    with pytest.raises(InvalidTransition) as info:
        next_closing_step(ClosingStep.COMPLETE, Input.PEER_CLOSE)
    assert info.value.state is ClosingStep.COMPLETE
    assert info.value.input is Input.PEER_CLOSE


def test_every_closing_step_is_reached_and_complete_is_terminal() -> None:
    """Each step but the first is some row's target; COMPLETE has no row of its own."""
    targets = set(CLOSING_STEPS.values())
    assert targets == set(ClosingStep) - {ClosingStep.RELEASING}
    assert ClosingStep.COMPLETE not in {step for step, _ in CLOSING_STEPS}


def test_our_close_and_the_peers_close_both_complete() -> None:
    """Released then peer close, or peer close then released: both end COMPLETE."""
    step = next_closing_step(ClosingStep.RELEASING, Input.CHANNELS_RELEASED)
    assert next_closing_step(step, Input.PEER_CLOSE) is ClosingStep.COMPLETE
    step = next_closing_step(ClosingStep.RELEASING, Input.PEER_CLOSE)
    assert next_closing_step(step, Input.CHANNELS_RELEASED) is ClosingStep.COMPLETE


def test_a_closing_step_missing_from_its_table_raises() -> None:
    """Inputs that do not move DRAINING along, and anything after COMPLETE, raise."""
    with pytest.raises(InvalidTransition):
        next_closing_step(ClosingStep.RELEASING, Input.PONG)
    with pytest.raises(InvalidTransition):
        next_closing_step(ClosingStep.COMPLETE, Input.PEER_CLOSE)
