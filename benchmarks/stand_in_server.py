"""The PostgREST stand-in (tests/support/postgrest.py) served over HTTP by a process of its own,
for the fleet benchmark: `python -m benchmarks.stand_in_server <database url>` prints the base URL
on its first line of output, serves until SIGTERM, then prints the number of requests served.

Its own process, so that its CPU is counted apart from the writers' and the database's: it is a
Python HTTP server (a thread per connection, the GIL shared) standing in for PostgREST and
Supabase's gateway, and at a few hundred requests a second it is a bottleneck of its own that
the real ones are not.
"""

from __future__ import annotations

import signal
import sys

from tests.support.postgrest import PostgrestStandIn, serve


def main(argv: list[str]) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    stand_in = PostgrestStandIn(argv[0])
    try:
        with serve(stand_in) as url:
            print(url, flush=True)
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        stand_in.close()
    print(f"requests {stand_in.requests}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
