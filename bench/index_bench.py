"""MailboxIndex load figures: puts per second and in_order time at 100k and 1M entries.

Prints figures only; never run as a test. From the repository root:
``PYTHONPATH=. python bench/index_bench.py [sizes...]``.
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc
from collections.abc import Callable

from mupdate.db.index import MailboxIndex
from mupdate.model import EntryState, MailboxEntry


def make_entries(count: int, seed: int = 1) -> list[MailboxEntry]:
    rng = random.Random(seed)
    entries = []
    for i in range(count):
        user = f"u{rng.randrange(count):07d}x{i}"
        name = f"user.{user}" if i % 3 else f"example.com!user.{user}.Sent"
        location = f"be{i % 20}!default"
        entries.append(
            MailboxEntry(name.encode(), EntryState.ACTIVE, location.encode(), b"a\tlrs\t")
        )
    return entries


def timed(label: str, func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    elapsed = time.perf_counter() - start
    print(f"  {label:<48} {elapsed * 1000:10.1f} ms")
    return elapsed


def bench(size: int) -> None:
    print(f"{size:,} entries")
    entries = make_entries(size)
    extra = make_entries(1000, seed=2)

    index = MailboxIndex()

    def put_all() -> None:
        for e in entries:
            index.put(e)

    elapsed = timed(f"{size:,} puts into an empty index", put_all)
    print(f"  {'puts/s':<48} {size / elapsed:10,.0f}")
    timed("first in_order() after the puts (sorts once)", lambda: sum(1 for _ in index.in_order()))
    timed("in_order() again, nothing changed", lambda: sum(1 for _ in index.in_order()))
    timed("in_order(b'be3!') prefix filter", lambda: sum(1 for _ in index.in_order(b"be3!")))
    timed("for_servers([be3, be7])", lambda: sum(1 for _ in index.for_servers([b"be3", b"be7"])))

    def one_put_then_list() -> None:
        index.put(extra[0])
        index.remove(entries[0].name)
        for _ in index.in_order():
            pass

    timed("1 put + 1 remove, then in_order()", one_put_then_list)

    def hundred_then_list() -> None:
        for e in extra[1:101]:
            index.put(e)
        next(index.in_order())

    timed("100 puts, then first item of in_order()", hundred_then_list)

    more = make_entries(100_000, seed=3)

    def many_then_list() -> None:
        for e in more:
            index.put(e)
        for _ in index.in_order():
            pass

    timed("100,000 more puts, then in_order()", many_then_list)

    timed("MailboxIndex(entries) (load at start)", lambda: MailboxIndex(entries))
    start = time.perf_counter()
    for e in entries:
        index.get(e.name)
    print(f"  {'get() per second':<48} {size / (time.perf_counter() - start):10,.0f}")

    tracemalloc.start()
    snapshot_before = tracemalloc.get_traced_memory()[0]
    measured = MailboxIndex(entries)
    sum(1 for _ in measured.in_order())
    index_bytes = tracemalloc.get_traced_memory()[0] - snapshot_before
    tracemalloc.stop()
    print(f"  {'index overhead beyond the entries':<48} {index_bytes / size:10.0f} B/entry")


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [100_000, 1_000_000]
    for size in sizes:
        bench(size)


if __name__ == "__main__":
    main()
