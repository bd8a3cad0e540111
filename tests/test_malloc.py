"""tally/malloc.py: threads that allocate at once share the arenas asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Sixteen threads (the web's WEB_THREADS) malloc at once through ctypes, which releases the
# GIL as C code reading a query's result does; malloc_info then lists the arenas.
ARENAS_USED = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from tally import malloc
    print(malloc.limit_arenas(), file=sys.stderr)
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    start = threading.Barrier(16)
    def allocate():
        start.wait()
        for _ in range(20000):
            libc.free(libc.malloc(4096))
    threads = [threading.Thread(target=allocate) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with tempfile.NamedTemporaryFile() as info:
        handle = libc.fopen(info.name.encode(), b"w")
        libc.malloc_info(0, handle)
        libc.fclose(handle)
        print(open(info.name).read().count("<heap nr="))
    """
)


def arenas_used(**env: str) -> tuple[int, str]:
    """The arenas a process's 16 allocating threads used, and what limit_arenas() returned."""
    chosen = ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
    environment = {key: value for key, value in os.environ.items() if key not in chosen}
    done = subprocess.run(
        [sys.executable, "-c", ARENAS_USED],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout), done.stderr.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_sixteen_threads_share_two_arenas():
    used, limited = arenas_used()
    assert limited == "True"
    assert used <= 2, f"{used} arenas"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_operators_malloc_arena_max_is_left_as_chosen():
    used, limited = arenas_used(MALLOC_ARENA_MAX="3")
    assert limited == "False"
    assert used == 3, f"{used} arenas"
