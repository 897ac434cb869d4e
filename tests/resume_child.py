"""Resume a snapshot file in this (fresh) process and print the result as JSON.

Usage: python resume_child.py SNAPSHOT_PATH {msgpack|json} ANSWER

Answers every outstanding input request with ANSWER. Run by tests/test_resume_process.py with
the tests directory on PYTHONPATH.
"""

from __future__ import annotations

import json
import pathlib
import sys

import trio
from _process_workflow import WORKFLOW

import blazen_trio as bz


async def main(path: str, codec: str, answer: str) -> None:
    data = await trio.Path(path).read_bytes()
    if codec == "json":
        snapshot = bz.WorkflowSnapshot.from_json(data)
    else:
        snapshot = bz.WorkflowSnapshot.from_bytes(data)
    async with WORKFLOW.start(resume=snapshot) as handler:
        requests = [request.request_id for request in handler.pending_input_requests]
        for request_id in requests:
            await handler.respond_to_input(request_id, answer)
        result = await handler.result()
    report = {
        "result": result.result,
        "run_id": result.run_id,
        "usage": [result.usage.prompt_tokens, result.usage.total_tokens],
        "answered": requests,
        "module": pathlib.Path(sys.modules["_process_workflow"].__file__ or "").name,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
