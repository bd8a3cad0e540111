"""The C allocator's arenas, limited: the web's memory stays near what it holds.

glibc's malloc gives threads that allocate at once arenas of their own, up to eight per
core, and keeps what each freed for that arena's later use. The web's threads (WEB_THREADS,
16) read query results and request bodies through C code that releases the GIL, so each of
them ends up with its own arena of freed memory: after a full warm-up
(bench/footprint.py) that was about 19 MB of the web's resident memory beyond what two
arenas keep, for no throughput (docs/BENCHMARKS.md, "The web's memory"). Heroku has set
`MALLOC_ARENA_MAX=2` on new apps since 2019 for the same reason (Dev Center, "Tuning glibc
Memory Behavior"); web.py asks for it at start, so it holds wherever the web runs, and an
operator's own MALLOC_ARENA_MAX is left as chosen. The worker and the clock, with few
threads and about 50 MB each, are left as they are.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Ask glibc's malloc for at most `arenas` arenas, for the threads started after; False
    (nothing changed) where the C library has no mallopt (musl) or where glibc's own
    MALLOC_ARENA_MAX (or GLIBC_TUNABLES' arena_max) already chose."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(M_ARENA_MAX, arenas) == 1
