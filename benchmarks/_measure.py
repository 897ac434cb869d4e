"""Rounds, deadlines, RSS and the answer protocol: the one procedure every engine goes through.

Stdlib only: the peer subprocesses import this module from venvs that have neither trio nor
blazen_trio, so the engine, the floor and the peers are all timed by the same code.
"""

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

SUITE_DIR = Path(__file__).resolve().parent

Metrics = dict[str, float]
"""One round's figures: seconds for times, bytes for sizes, KiB for memory."""

Samples = dict[str, list[float]]
"""Every kept round's figures, per metric."""

Job = dict[str, Any]
"""One job as JSON: `scenario`, its sizes, `rounds`, `warmup`, `budget_s` (what a child gets)."""

Prepare = Callable[[Job], Callable[[], Metrics]]
"""Builds a job's round function; may do one-time work (the idle-run memory probe) first."""

WARMUP_MATTERS_S = 1.0
"""A round slower than this is kept even while warming up: a warm-up round only buys
accuracy on fast rounds, and discarding a 60 s round of a slow peer wastes the budget."""


_deadline: ContextVar[float] = ContextVar("deadline", default=math.inf)


def remaining_s() -> float:
    """Seconds left before the current job's deadline (`timeout_s`); inf outside a job."""
    return _deadline.get() - time.perf_counter()


class TimedOut(Exception):
    """A round hit its job's deadline (raised by the event-loop wrappers)."""


def run_rounds(
    rounds_of: dict[str, Callable[[], Metrics]],
    *,
    rounds: int,
    warmup: int,
    budget_s: float,
    failed: Callable[[str, Exception], None],
) -> dict[str, Samples]:
    """Run `warmup` discarded rounds then up to `rounds` kept ones of each implementation in
    `rounds_of`, interleaved (A, B, A, B, ...), within `budget_s`.

    Interleaved so that a change in the machine's speed during the job weighs on every
    implementation alike: their ratio is taken from rounds run side by side. No new round
    starts once `budget_s` has elapsed and one round is kept, so a slow (quadratic) engine
    still yields a figure instead of blowing the suite's time. A round that raises drops its
    implementation (`failed` gets the exception); the others go on.
    """
    samples: dict[str, Samples] = {name: {} for name in rounds_of}
    running = dict(rounds_of)
    kept = 0
    started = time.perf_counter()
    for index in range(warmup + rounds):
        figures: dict[str, Metrics] = {}
        slow = False
        for name, one_round in list(running.items()):
            round_started = time.perf_counter()
            try:
                figures[name] = one_round()
            except Exception as exc:
                del running[name], samples[name]
                failed(name, exc)
                continue
            slow = slow or time.perf_counter() - round_started > WARMUP_MATTERS_S
        if not running:
            break
        if index >= warmup or slow:
            kept += 1
            for name, metrics in figures.items():
                for metric, value in metrics.items():
                    samples[name].setdefault(metric, []).append(value)
        over_budget = time.perf_counter() - started > budget_s or remaining_s() <= 0
        if kept >= rounds or (kept and over_budget):
            break
    return samples


class GaveUp(Exception):
    """A scenario stopped because the engine could not even set it up in reasonable time."""


class Unsupported(Exception):
    """The engine (or this version of it) cannot run the job; the message says what is missing."""


def _raised_in_suite(exc: BaseException) -> bool:
    """True if the innermost frame of `exc` is in this package: our own attribute access."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().parent == SUITE_DIR


def missing_api(exc: BaseException) -> BaseException | None:
    """The sign, inside `exc` (maybe a group), that the engine lacks an API we call.

    A NotImplementedError anywhere (an engine stub), or an AttributeError raised by our own
    attribute access (`handler.pause` on a handler without it). An AttributeError raised
    inside the engine is a bug in it, not a missing feature, and stays an error.
    """
    if isinstance(exc, NotImplementedError):
        return exc
    if isinstance(exc, AttributeError) and _raised_in_suite(exc):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := missing_api(inner)) is not None:
                return found
    return None


def measure_job(prepare: Prepare, job: Job, api: str) -> dict[str, object]:
    """One job's answer: `samples`, or why not: `unsupported` (an API the engine lacks),
    `gave_up` (set-up too slow) or `error`.

    A failing engine yields a row that says why instead of ending the whole suite.
    """
    return measure_side_by_side({api: prepare}, job, api)[api]


def measure_side_by_side(
    prepares: dict[str, Prepare], job: Job, api: str
) -> dict[str, dict[str, object]]:
    """The answers of several implementations of one job (the floor and the engine), their
    rounds interleaved; the job's time limit and budget are per implementation."""
    timeout_s = job.get("timeout_s", math.inf)
    answers: dict[str, dict[str, object]] = {}

    def failed(name: str, exc: Exception) -> None:
        answers[name] = _why_not(exc, api, timeout_s)

    token = _deadline.set(time.perf_counter() + timeout_s * len(prepares))
    try:
        rounds_of: dict[str, Callable[[], Metrics]] = {}
        for name, prepare in prepares.items():
            try:
                rounds_of[name] = prepare(job)
            except Exception as exc:
                failed(name, exc)
        samples = run_rounds(
            rounds_of,
            rounds=job["rounds"],
            warmup=job["warmup"],
            budget_s=job["budget_s"] * len(rounds_of),
            failed=failed,
        )
    finally:
        _deadline.reset(token)
    answers.update((name, {"samples": figures}) for name, figures in samples.items())
    return answers


def _why_not(exc: Exception, api: str, timeout_s: float) -> dict[str, object]:
    """Why a job has no figures, from what its set-up or a round raised."""
    if isinstance(exc, TimedOut):
        return {"timeout": f"timeout >{timeout_s:.0f}s"}
    if isinstance(exc, GaveUp):
        return {"gave_up": str(exc)}
    if isinstance(exc, Unsupported):
        return {"unsupported": str(exc)}
    missing = missing_api(exc)
    if missing is not None:
        return {"unsupported": f"engine lacks {api}: {missing}"}
    return {"error": f"{type(exc).__name__}: {exc}"}


def peak_rss_kib() -> float:
    """The process's peak resident set size so far, in KiB (`ru_maxrss`; Unix only)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1024 if sys.platform == "darwin" else float(peak)


def rss_kib() -> float:
    """The resident set size now, in KiB; the peak so far where /proc is missing.

    The current figure is preferred: a high-water mark left by imports would hide the growth
    of small runs.
    """
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_kib()
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024


def emit(payload: dict[str, object]) -> None:
    """Write a subprocess's single JSON answer on stdout, the only thing the parent parses."""
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()
