"""Send N no-op tracked jobs (`python -m benchmarks.produce N`); flushes pending statuses at exit."""

from __future__ import annotations

import sys

from benchmarks.bench_actors import noop


def main() -> None:
    n = int(sys.argv[1])
    tenant_id, user_id = sys.argv[2], sys.argv[3]
    payload = {"tenant_id": tenant_id, "user_id": user_id}
    for _ in range(n):
        noop.send(payload)


if __name__ == "__main__":
    main()
