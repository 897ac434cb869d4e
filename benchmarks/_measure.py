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
    one_round: Callable[[], Metrics], *, rounds: int, warmup: int, budget_s: float
) -> Samples:
    """Run `warmup` discarded rounds then up to `rounds` kept ones, within `budget_s`.

    No new round starts once `budget_s` has elapsed and one round is kept, so a slow
    (quadratic) engine still yields a figure instead of blowing the suite's time.
    """
    samples: Samples = {}
    kept = 0
    started = time.perf_counter()
    for index in range(warmup + rounds):
        round_started = time.perf_counter()
        metrics = one_round()
        slow = time.perf_counter() - round_started > WARMUP_MATTERS_S
        if index >= warmup or slow:
            kept += 1
            for name, value in metrics.items():
                samples.setdefault(name, []).append(value)
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
    timeout_s = job.get("timeout_s", math.inf)
    token = _deadline.set(time.perf_counter() + timeout_s)
    try:
        one_round = prepare(job)
        samples = run_rounds(
            one_round, rounds=job["rounds"], warmup=job["warmup"], budget_s=job["budget_s"]
        )
    except TimedOut:
        return {"timeout": f"timeout >{timeout_s:.0f}s"}
    except GaveUp as exc:
        return {"gave_up": str(exc)}
    except Unsupported as exc:
        return {"unsupported": str(exc)}
    except Exception as exc:
        missing = missing_api(exc)
        if missing is not None:
            return {"unsupported": f"engine lacks {api}: {missing}"}
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        _deadline.reset(token)
    return {"samples": samples}


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
