"""The mass-delete brake: a resync that would drop too much is not applied (design.md).

A master that lost its database lists nothing, and Cyrus's slave then empties every
frontend (§9.2). ``check_brake`` holds a plan that removes more than ``share`` of the
slave's non-local entries, when there are more than ``minimum`` of them; the glue then
keeps the last-known-good copy, logs the ``Hold`` reason critically and retries. Local
mailboxes of a unified backend are not counted: the guard keeps them anyway. The ``Hold``
names the first ``SAMPLE`` entries that would go, for the log line. Moving an entry to
another server is an update, not a removal. An operator releases the brake with
``mupdate_brake_release: yes`` or once with ``mupdate-slave-brake release``.

Pure; imports nothing from Twisted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from mupdate.db.store import RemoveEntry
from mupdate.model import MailboxEntry
from mupdate.slave.guard import LocalFacts
from mupdate.slave.resync import ResyncPlan


@dataclass(frozen=True, slots=True)
class BrakeSettings:
    """``mupdate_brake_share``, ``mupdate_brake_minimum``, ``mupdate_brake_release``."""

    share: float = 0.5
    minimum: int = 10
    released: bool = False


SAMPLE: Final = 20
"""How many of the names a held resync would remove the ``Hold`` carries (key order)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Do not apply: the plan removes ``would_remove`` of ``of`` entries, over ``share``.

    ``share`` is the configured limit; ``reason`` is one sentence for the critical log line;
    ``sample`` the first ``SAMPLE`` names it would remove, in key order (the plan's), so
    the operator sees what would go before releasing the brake.
    """

    would_remove: int
    of: int
    share: float
    reason: str
    sample: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Proceed:
    """Apply the plan; ``released`` when the brake would have held but was released."""

    released: bool = False


def check_brake(
    plan: ResyncPlan,
    local: Mapping[bytes, MailboxEntry],
    facts: LocalFacts,
    settings: BrakeSettings,
) -> Hold | Proceed:
    """Hold when removals > ``share`` x N and N > ``minimum``, N = non-local entries held."""
    held = sum(1 for name, entry in local.items() if not facts.is_local(name, entry))
    removed = [change.name for change in plan.changes if isinstance(change, RemoveEntry)]
    removals = len(removed)
    limit = settings.share * held
    if held <= settings.minimum or removals <= limit or math.isclose(removals, limit):
        return Proceed()  # isclose: 29 of 100 is "at" a share of 0.29, whatever the float says
    if settings.released:
        return Proceed(released=True)
    reason = (
        f"the master's list would remove {removals} of our {held} entries "
        f"({removals / held:.0%}, more than the brake's {settings.share:.0%}); keeping the "
        "last-known-good copy and retrying. If the master really lost these mailboxes, "
        "release the brake with `mupdate_brake_release: yes` in the config, or once with "
        "`mupdate-slave-brake release --config FILE`"
    )
    return Hold(removals, held, settings.share, reason, tuple(removed[:SAMPLE]))
