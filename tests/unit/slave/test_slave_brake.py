"""The mass-delete brake: share and minimum boundaries, release, locals and moves not counted.

design.md "Mass-delete brake"; seed 000 (a master that lost its database).
"""

from __future__ import annotations

import pytest

from mupdate.db.store import RemoveEntry
from mupdate.model import EntryState, MailboxEntry
from mupdate.slave.brake import SAMPLE, BrakeSettings, Hold, Proceed, check_brake
from mupdate.slave.guard import LocalFacts
from mupdate.slave.resync import ResyncPlan, plan_resync

OWN = frozenset({"be1"})
STANDARD = LocalFacts(False, OWN)
UNIFIED = LocalFacts(True, OWN)


def remote_entries(count: int, server: bytes = b"be2") -> dict[bytes, MailboxEntry]:
    names = (f"user.u{i:03}".encode() for i in range(count))
    return {n: MailboxEntry(n, EntryState.ACTIVE, server + b"!default") for n in names}


def removing(local: dict[bytes, MailboxEntry], count: int) -> ResyncPlan:
    gone = tuple(RemoveEntry(name, None) for name in list(local)[:count])
    return ResyncPlan(gone, (), (), 0, 0, count)


@pytest.mark.parametrize(
    ("held", "removals", "settings", "verdict"),
    [
        pytest.param(20, 9, BrakeSettings(), Proceed(), id="below_share"),
        pytest.param(20, 10, BrakeSettings(), Proceed(), id="at_share_proceeds"),
        pytest.param(20, 11, BrakeSettings(), "hold", id="above_share_holds"),
        pytest.param(20, 20, BrakeSettings(), "hold", id="everything_holds"),
        pytest.param(10, 10, BrakeSettings(), Proceed(), id="at_minimum_never_holds"),
        pytest.param(11, 6, BrakeSettings(), "hold", id="one_above_minimum_holds"),
        pytest.param(11, 5, BrakeSettings(), Proceed(), id="one_above_minimum_below_share"),
        pytest.param(0, 0, BrakeSettings(), Proceed(), id="empty_copy"),
        pytest.param(1, 1, BrakeSettings(minimum=0), "hold", id="minimum_zero_single_entry"),
        pytest.param(1, 1, BrakeSettings(minimum=1), Proceed(), id="minimum_one_single_entry"),
        pytest.param(100, 31, BrakeSettings(share=0.3), "hold", id="custom_share_above"),
        pytest.param(100, 30, BrakeSettings(share=0.3), Proceed(), id="custom_share_at"),
        pytest.param(100, 29, BrakeSettings(share=0.29), Proceed(), id="float_share_at_is_at"),
        pytest.param(100, 30, BrakeSettings(share=0.29), "hold", id="float_share_above"),
        pytest.param(100, 100, BrakeSettings(share=1.0), Proceed(), id="share_one_never_holds"),
        pytest.param(100, 1, BrakeSettings(share=0.0), "hold", id="share_zero_holds_any_removal"),
        pytest.param(100, 0, BrakeSettings(share=0.0), Proceed(), id="share_zero_no_removal"),
        pytest.param(
            20, 11, BrakeSettings(released=True), Proceed(released=True), id="released_would_hold"
        ),
        pytest.param(20, 10, BrakeSettings(released=True), Proceed(), id="released_would_not_hold"),
        pytest.param(10, 10, BrakeSettings(released=True), Proceed(), id="released_under_minimum"),
    ],
)
def test_check_brake(
    held: int, removals: int, settings: BrakeSettings, verdict: Hold | Proceed | str
) -> None:
    local = remote_entries(held)
    result = check_brake(removing(local, removals), local, STANDARD, settings)
    if verdict == "hold":
        assert isinstance(result, Hold)
        assert (result.would_remove, result.of, result.share) == (removals, held, settings.share)
    else:
        assert result == verdict


def test_hold_reason_gives_counts_and_both_ways_to_release() -> None:
    local = remote_entries(40)
    result = check_brake(removing(local, 30), local, STANDARD, BrakeSettings())
    assert isinstance(result, Hold)
    assert "30 of our 40" in result.reason
    assert "75%" in result.reason
    assert "50%" in result.reason
    assert "mupdate_brake_release: yes" in result.reason
    assert "mupdate-slave-brake release --config FILE" in result.reason


def test_local_mailboxes_are_not_counted() -> None:
    # 12 remote + 20 local entries; the master lists none of them. Counting locals, 12 of 32
    # would be under half; the brake counts the 12 it could lose and holds.
    local = remote_entries(12) | {
        e.name: e
        for e in (
            MailboxEntry(f"user.l{i:02}".encode(), EntryState.ACTIVE, b"be1!default")
            for i in range(20)
        )
    }
    plan = plan_resync(local, {}, UNIFIED)
    assert plan.removed == 12
    result = check_brake(plan, local, UNIFIED, BrakeSettings())
    assert isinstance(result, Hold)
    assert (result.would_remove, result.of) == (12, 12)


def test_local_mailboxes_do_not_lift_the_copy_over_the_minimum() -> None:
    local = remote_entries(10) | {
        e.name: e
        for e in (
            MailboxEntry(f"user.l{i:02}".encode(), EntryState.ACTIVE, b"default") for i in range(20)
        )
    }
    plan = plan_resync(local, {}, UNIFIED)
    assert check_brake(plan, local, UNIFIED, BrakeSettings()) == Proceed()


def test_mailboxes_local_by_disk_are_not_counted() -> None:
    local = remote_entries(30)
    on_disk = frozenset(list(local)[:15]).__contains__
    facts = LocalFacts(True, OWN, on_disk)
    plan = plan_resync(local, {}, facts)
    assert plan.removed == 15
    result = check_brake(plan, local, facts, BrakeSettings())
    assert isinstance(result, Hold)
    assert (result.would_remove, result.of) == (15, 15)


def test_moves_to_another_server_are_not_removals() -> None:
    local = remote_entries(50)
    moved = remote_entries(50, server=b"be3")
    plan = plan_resync(local, moved, STANDARD)
    assert (plan.updated, plan.removed) == (50, 0)
    assert check_brake(plan, local, STANDARD, BrakeSettings()) == Proceed()


def test_seed_000_frontend_brake_holds_on_empty_master() -> None:
    local = remote_entries(50)
    plan = plan_resync(local, {}, STANDARD)
    assert plan.removed == 50
    result = check_brake(plan, local, STANDARD, BrakeSettings())
    assert isinstance(result, Hold)
    assert (result.would_remove, result.of, result.share) == (50, 50, 0.5)
    assert check_brake(plan, local, STANDARD, BrakeSettings(released=True)) == Proceed(
        released=True
    )


def test_hold_names_the_first_removals_in_key_order() -> None:
    # The operator must see what would go: the first SAMPLE names in Cyrus key order (the
    # plan's order, where user.a.b comes before user.a-b), plus the total.
    local = remote_entries(40)
    local |= {
        n: MailboxEntry(n, EntryState.ACTIVE, b"be2!default") for n in (b"user.a-b", b"user.a.b")
    }
    plan = plan_resync(local, {}, STANDARD)
    verdict = check_brake(plan, local, STANDARD, BrakeSettings())
    assert isinstance(verdict, Hold)
    assert verdict.would_remove == 42
    assert len(verdict.sample) == SAMPLE == 20
    assert verdict.sample[:2] == (b"user.a.b", b"user.a-b")
    assert verdict.sample[2:] == tuple(f"user.u{i:03}".encode() for i in range(18))


def test_hold_sample_is_all_removals_when_few() -> None:
    local = remote_entries(12)
    verdict = check_brake(removing(local, 7), local, STANDARD, BrakeSettings())
    assert isinstance(verdict, Hold)
    assert verdict.sample == tuple(list(local)[:7])
