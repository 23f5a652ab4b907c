"""The fault pool with no upstream and no faults, served on a port: a pool that answers at once.

.venv/bin/python benchmarks/instant_pool.py PORT
"""

from __future__ import annotations

import sys

import uvicorn

import common  # noqa: F401  (puts the repo root on sys.path for tests.support)
from tests.support.fault_pool import FaultPool

if __name__ == "__main__":
    uvicorn.run(FaultPool(instant=True).app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
