"""Run by tests/training/test_distributed.py under torchrun: `prepare` of a run config in each
process, and where each process's pairs came from (a line `data {json}` per process)."""

from __future__ import annotations

import json
import os
import sys

from dpolab.training import load_config, prepare

prepared = prepare(load_config(sys.argv[1]))
data = prepared.data
record = {
    "rank": int(os.environ["RANK"]),
    "from_cache": data.from_cache,
    "cache": str(data.cache),
    "train": [dict(row) for row in data.train],
}
print("data " + json.dumps(record), flush=True)
