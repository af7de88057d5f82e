"""The MUPDATE slave: pure safety decisions and the twistd glue that follows a master (§9).

The decisions (style.md §6) take plain values and return decision values: ``guard``
(the local-authority guard, §9.3), ``resync`` (the by-set merge plan, §9.2), ``brake``
(the mass-delete brake); ``disk`` and ``scan`` answer the guard's "is it on our
partitions?" from the filesystem (legacy paths, and a scan of every ``cyrus.header``).
They import nothing from Twisted, and neither does this package's top level: the glue
modules are imported by name.
"""

from mupdate.slave.brake import BrakeSettings, Hold, Proceed, check_brake
from mupdate.slave.disk import (
    SpoolLayout,
    header_path,
    header_roots,
    legacy_names,
    make_on_disk,
)
from mupdate.slave.guard import Accept, GuardRefusal, LocalFacts, check_change
from mupdate.slave.resync import ResyncPlan, plan_resync
from mupdate.slave.scan import ScanResult, header_name, scan_partitions

__all__ = [
    "Accept",
    "BrakeSettings",
    "GuardRefusal",
    "Hold",
    "LocalFacts",
    "Proceed",
    "ResyncPlan",
    "ScanResult",
    "SpoolLayout",
    "check_brake",
    "check_change",
    "header_name",
    "header_path",
    "header_roots",
    "legacy_names",
    "make_on_disk",
    "plan_resync",
    "scan_partitions",
]
