"""Resume a `_family_workflow.FAMILY` snapshot file in this (fresh) process; print the result.

Usage: python family_child.py SNAPSHOT_PATH. Run by tests/test_subworkflows.py with the tests
directory on PYTHONPATH; virtual time, so the children's waits take no real time.
"""

from __future__ import annotations

import json
import sys

import trio
import trio.testing
from _family_workflow import FAMILY

import blazen_trio as bz


async def main(path: str) -> None:
    snapshot = bz.WorkflowSnapshot.from_bytes(await trio.Path(path).read_bytes())
    result = await FAMILY.run(resume=snapshot)
    print(json.dumps({"result": result.result, "tokens": result.usage.total_tokens}))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], clock=trio.testing.MockClock(autojump_threshold=0))
