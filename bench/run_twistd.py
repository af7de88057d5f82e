"""``twistd``, optionally under cProfile: with MUPDATE_PROFILE=FILE the stats are written there
when the reactor has shut down (twistd then re-raises SIGTERM, so ``python -m cProfile``
would never get to write them)."""

import cProfile
import os

from twisted.scripts.twistd import run

path = os.environ.get("MUPDATE_PROFILE")
if path:
    from twisted.internet import reactor

    profiler = cProfile.Profile()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(path)

    reactor.addSystemEventTrigger("after", "shutdown", dump)
    profiler.enable()
run()
