"""The scale-out scenario's shared parts: worker processes and the timed round (stdlib only).

Both engines go through the same code: `Fleet` starts N worker processes of one engine and
stops them; `scaleout_round` times a client against them. The round only awaits what the
engine's `Client` gives it, so it runs under Trio (blazen_trio) and asyncio (the DBOS peer).

A worker process prints one line once it serves, then serves until its stdin closes: the
driver closes it to stop the workers, and so does the system if the driver is killed, so no
worker outlives its job.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Protocol

from benchmarks._measure import Metrics

STOP_TIMEOUT_S = 15.0
"""How long a worker may take to let go of its runs and exit once told to stop."""

SUBMITTERS = 10
"""Submits in flight at once in a client (each is one transaction on a pooled connection)."""

READY = "ready"
"""The line a worker process prints once it serves."""


class Client(Protocol):
    """One engine's client: submits runs of the 3-step workflow and waits for their results."""

    async def submit_many(self, inputs: Sequence[int]) -> list[str]:
        """Submit one run per input; their ids, in order."""
        ...

    async def result(self, run_id: str) -> int:
        """Wait for the run's result."""
        ...


def serve_until_stdin_closes() -> None:
    """Tell the driver this worker serves, then block until the driver closes our stdin."""
    print(READY, flush=True)
    sys.stdin.read()


class Fleet:
    """`n` worker processes running `command`, each told its index as the last argument."""

    def __init__(self, command: Sequence[str], n: int) -> None:
        self._logs: list[IO[bytes]] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        for index in range(n):
            # A worker's stderr, read only if it fails to start; a pipe could fill and block it.
            log = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the fleet
            self._logs.append(log)
            self._processes.append(
                subprocess.Popen(
                    [*command, str(index)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            )
        for process in self._processes:
            self._wait_ready(process)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if line != READY:
            self.stop()
            raise RuntimeError(f"a worker did not start ({line!r}): {self._last_words()}")

    def _last_words(self) -> str:
        for log in self._logs:
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return "no output"

    def stop(self) -> None:
        """Close every worker's stdin, wait for it to exit, kill it if it does not."""
        for process in self._processes:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
        for process in self._processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


async def _check(client: Client, run_id: str, submitted: int) -> None:
    """Wait for a run and check it went through all 3 steps (each adds 1)."""
    value = await client.result(run_id)
    if value != submitted + 3:
        raise RuntimeError(f"run {run_id} gave {value!r}, expected {submitted + 3}")


async def scaleout_round(client: Client, runs: int, latency_runs: int) -> Metrics:
    """Throughput: `runs` submitted at once, from the first submit to the last result; then
    latency: `latency_runs` single runs one at a time (an idle fleet), submit to result."""
    started = time.perf_counter()
    inputs = list(range(runs))
    run_ids = await client.submit_many(inputs)
    for submitted, run_id in zip(inputs, run_ids, strict=True):
        await _check(client, run_id, submitted)
    elapsed = time.perf_counter() - started
    latencies = []
    for submitted in range(latency_runs):
        sent = time.perf_counter()
        (run_id,) = await client.submit_many([submitted])
        await _check(client, run_id, submitted)
        latencies.append(time.perf_counter() - sent)
    return {
        "time": elapsed,
        "runs_per_s": runs / elapsed,
        "latency_median": statistics.median(latencies),
        "latency_p95": percentile(latencies, 0.95),
    }
