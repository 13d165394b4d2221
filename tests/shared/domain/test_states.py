from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.states import (
    ALLOWED,
    IN_FLIGHT,
    TERMINAL,
    AttemptStatus,
    IllegalTransition,
    observe,
    transition,
)

S = AttemptStatus


def test_every_status_has_a_row() -> None:
    assert set(ALLOWED) == set(AttemptStatus)
    assert set(AttemptStatus) == TERMINAL | IN_FLIGHT
    assert not TERMINAL & IN_FLIGHT


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.QUEUED, S.PROCESSING),
        (S.QUEUED, S.CANCELED),
        (S.PROCESSING, S.SUCCEEDED),
        (S.PROCESSING, S.FAILED),
        (S.PROCESSING, S.REQUIRES_ACTION),
        (S.PROCESSING, S.UNKNOWN),
        (S.PROCESSING, S.QUEUED),
        (S.REQUIRES_ACTION, S.SUCCEEDED),
        (S.REQUIRES_ACTION, S.CANCELED),
        (S.UNKNOWN, S.SUCCEEDED),
        (S.UNKNOWN, S.PROCESSING),
        (S.FAILED, S.SUCCEEDED),
        (S.CANCELED, S.SUCCEEDED),
    ],
)
def test_design_transitions_are_allowed(current: AttemptStatus, target: AttemptStatus) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.SUCCEEDED, S.FAILED),
        (S.SUCCEEDED, S.CANCELED),
        (S.SUCCEEDED, S.QUEUED),
        (S.QUEUED, S.UNKNOWN),
        (S.FAILED, S.QUEUED),
        (S.CANCELED, S.PROCESSING),
        (S.PROCESSING, S.CANCELED),
        (S.FAILED, S.REQUIRES_ACTION),
    ],
)
def test_illegal_transitions_raise(current: AttemptStatus, target: AttemptStatus) -> None:
    with pytest.raises(IllegalTransition) as refused:
        transition(current, target)
    # What the log and the caller see: the move refused, both ends named.
    assert (refused.value.current, refused.value.target) == (current, target)
    assert str(refused.value) == f"a charge attempt cannot go from {current} to {target}"


def test_late_failure_never_overwrites_success() -> None:
    assert observe(S.SUCCEEDED, S.FAILED) is None
    assert observe(S.SUCCEEDED, S.CANCELED) is None


def test_money_moved_wins_over_failed_and_canceled() -> None:
    assert observe(S.FAILED, S.SUCCEEDED) is S.SUCCEEDED
    assert observe(S.CANCELED, S.SUCCEEDED) is S.SUCCEEDED


def test_a_waiting_retry_learns_the_lost_answer() -> None:
    assert observe(S.QUEUED, S.SUCCEEDED) is S.SUCCEEDED
    assert observe(S.QUEUED, S.FAILED) is S.FAILED


def test_observations_never_requeue() -> None:
    assert observe(S.UNKNOWN, S.PROCESSING) is None
    assert observe(S.PROCESSING, S.QUEUED) is None
    assert observe(S.PROCESSING, S.PROCESSING) is None


@given(st.lists(st.sampled_from([S.SUCCEEDED, S.FAILED, S.REQUIRES_ACTION, S.CANCELED]), max_size=12))
def test_once_succeeded_always_succeeded(reports: list[AttemptStatus]) -> None:
    """Whatever order the news arrives in, a success that was seen stays."""
    status = S.PROCESSING
    seen_success = False
    for report in reports:
        status = observe(status, report) or status
        seen_success = seen_success or report is S.SUCCEEDED
        if seen_success:
            assert status is S.SUCCEEDED


def test_labels_are_the_admin_words() -> None:
    assert S.REQUIRES_ACTION.label == "Waiting for the client to authenticate"
    assert [s.label for s in (S.QUEUED, S.PROCESSING, S.SUCCEEDED, S.FAILED)] == [
        "Queued",
        "Processing",
        "Succeeded",
        "Failed",
    ]
