"""``make bench``: every benchmark, each printing its figures beside its baseline."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_concurrency
import bench_core
import bench_migration
import bench_snapshots


def main() -> int:
    status = bench_core.main()
    print()
    status = status or bench_concurrency.main()
    print()
    status = status or bench_snapshots.main()
    print()
    status = status or bench_migration.main()
    try:
        import bench_rhai
    except ImportError:
        print("rhai benchmark not available")
        return status
    print()
    return status or bench_rhai.main()


if __name__ == "__main__":
    sys.exit(main())
