"""The printed tables and the JSON file: medians, noise, ratios, and why a figure is missing.

Four tables from one run: blazen_trio against its floors (the tight bare-Trio code and a plain
loop), against the peers, the durability rows against one raw SQLite WAL commit, and the
scale-out rows (worker processes on PostgreSQL) against DBOS's queues.
"""

import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks._peers import FoundPeer
from benchmarks._plan import ENGINE, FLOOR, DurableRow, Mode, Plan, Row

Answer = dict[str, object]
"""A job's answer for one column: `samples` (+ `median`, `min`, `max`), or why there are none."""

Results = dict[str, dict[str, Answer]]
"""column -> job key -> answer."""

SCALEOUT_LATENCIES = ("latency_median", "latency_p95")
"""The scale-out rounds' latency figures, each the median over the rounds."""

REASONS = ("unsupported", "gave_up", "timeout", "error", "missing")

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
"""`PRAGMA synchronous` values as SQLite names them."""

FLOOR_NAMES = {
    "spawn_time": "spawn",
    "pool_time": "pool",
}
"""How a cell names the floor that was the faster one, where a row has several."""

METHOD = {
    "time": "wall time (time.perf_counter) of the measured part of each round; the figure is "
    "the median of the kept rounds, [min-max] their spread; each round runs in its own event "
    "loop (trio.run / asyncio.run); the floor's and blazen_trio's rounds alternate within a "
    "job, except in the fresh-process jobs (concurrent runs, scale-out)",
    "memory": "RSS growth (/proc/self/statm; getrusage ru_maxrss where /proc is missing) from "
    "before the runs to the moment all of them are parked inside their step at once (their "
    "peak), divided by the number of runs; in a fresh process per engine, after 100 warm-up "
    "runs",
    "floor": "the tightest correct bare-Trio code for each scenario: chain = one task, the "
    "same memory channel, handler awaited inline; fan-out = limiter-gated spawn (a slot taken "
    "before each task starts) and a pool of `workers` tasks, the faster one shown; runs = a "
    "nursery and one task per run, its step awaited inline; stream = per-subscriber memory "
    "channels read in batches (receive_nowait drain loops); snapshot = pickle / json of the "
    "same state and pending events as plain dicts (less metadata than an engine snapshot)",
    "plain loop": "the same handler calls with no Trio and no coroutines (a deque, plain "
    "functions): the physical limit of the work in Python",
    "fan-in": "every engine's collect_events expectation list is built once per size, not per "
    "call (the benchmark's own cost)",
    "streaming": "subscriber buffers sized to be lossless in every engine; the producer yields "
    "every 64 events; LlamaIndex streams to one consumer per run, so its 'many subscribers' "
    "figure includes a hand fan-out through asyncio.Queue",
    "llama snapshot": "LlamaIndex has no pause: json.dumps(ctx.to_dict()) of a run parked on "
    "one step, and Context.from_dict(json.loads(...))",
    "uncapped peers": "pydantic-graph (map + join) and Burr (MapStates) have no concurrency "
    "cap on a fan-out: all items run at once, where blazen_trio and the floor run at most "
    "`workers`",
    "durability": "per step = the run's wall time / step invocations (the many-keys chains: "
    "from the first one-key step to the end, so the step that writes all keys is not counted); "
    "a new store file per round (DBOS: one database per job, it launches once per process); "
    "raw WAL commit = one INSERT of 256 bytes + COMMIT in WAL mode, looped in a worker thread, "
    "stdlib sqlite3; DBOS and LangGraph report the SQLite settings read back from their "
    "connections",
    "scaleout": "a 3-step run (each step adds 1) driven by N worker processes on one "
    "PostgreSQL server the suite starts (PostgreSQL's own fsync and synchronous_commit), a "
    "fresh database per job and engine; the client (the job's process) submits `runs` runs, "
    "at most 10 submits in flight, and waits for every result: runs_per_s = runs / (last "
    "result - first submit); then `latency_runs` single runs one at a time on the idle "
    "fleet, latency = result - submit, median and p95 per round; each job first warms its "
    "fleet up with an untimed round. blazen_trio: `bz.open_worker` over "
    "`PostgresCheckpointStore` (LISTEN/NOTIFY, 1 s poll fallback), `WorkflowClient`. DBOS: "
    "N processes launching DBOS on one system database, a registered queue with the same "
    "worker_concurrency, enqueue_async and get_result; its queue and result waits poll every "
    "10 ms (its default is 1 s)",
}


def add_stats(answer: Answer) -> Answer:
    """Add each metric's median, min and max over the kept rounds."""
    samples = answer.get("samples")
    if isinstance(samples, dict):
        answer["median"] = {name: statistics.median(values) for name, values in samples.items()}
        answer["min"] = {name: min(values) for name, values in samples.items()}
        answer["max"] = {name: max(values) for name, values in samples.items()}
    return answer


def stat(answer: Answer | None, metric: str, which: str = "median") -> float | None:
    figures = (answer or {}).get(which)
    if isinstance(figures, dict):
        value = figures.get(metric)
        return float(value) if isinstance(value, int | float) else None
    return None


def reason(answer: Answer | None) -> str | None:
    """Why an answer has no figures, in full (None if it has figures)."""
    if answer is None:
        return "not measured"
    for kind in REASONS:
        if kind in answer:
            text = str(answer[kind])
            if kind == "unsupported":
                return f"n/a ({text})"
            return f"gave up: {text}" if kind == "gave_up" else text
    return None


def short_reason(full: str) -> str:
    """The table's version of a reason: the part before any detail."""
    head = full.split(": ", 1)[0]
    if full.startswith("n/a (") and not head.endswith(")"):
        head += ")"
    return head if len(head) <= 44 else head[:41] + "..."


_TIME_SCALES = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"))


def _time_scale(value: float) -> tuple[float, str]:
    return next(((s, u) for s, u in _TIME_SCALES if value >= s), _TIME_SCALES[-1])


def format_figure(value: float, unit: str) -> str:
    if unit == "s":
        scale, suffix = _time_scale(value)
        return f"{value / scale:.3g} {suffix}"
    if unit == "bytes":
        return f"{value / 1024:,.0f} KiB" if value < 1024**2 else f"{value / 1024**2:.2f} MiB"
    if unit == "KiB":
        return f"{value:.1f} KiB"
    return f"{value:.2f}x"


def format_spread(median: float, low: float | None, high: float | None, unit: str) -> str:
    """The median with the rounds' [min-max] in its unit, where the rounds differ."""
    text = format_figure(median, unit)
    if unit != "s" or low is None or high is None or low == high:
        return text
    scale, _ = _time_scale(median)
    return f"{text} [{low / scale:.3g}-{high / scale:.3g}]"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def format_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def render(table: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> str:
    """A Markdown table, columns padded, the first left-aligned; numbered notes after it."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]

    def fmt(line: Sequence[str]) -> str:
        cells = [
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [fmt(table[0]), rule, *(fmt(line) for line in table[1:])]
    out += [f"[{i}] {note}" for i, note in enumerate(notes, start=1)]
    return "\n".join(out)


class Report:
    """Builds every figure once from the run's results; renders the tables as text and JSON."""

    def __init__(
        self,
        results: Results,
        rows: list[Row],
        durable_rows: list[DurableRow],
        peers: list[FoundPeer],
        scaleout: Sequence[Plan] = (),
        postgres: dict[str, str] | None = None,
    ) -> None:
        self.results = results
        self.rows = rows
        self.durable_rows = [r for r in durable_rows if r.column in results]
        self.peers = peers
        self.scaleout = list(scaleout)
        self.postgres = postgres
        self.notes: list[str] = []

    # -- figures ------------------------------------------------------------------------

    def answer(self, column: str, key: str) -> Answer | None:
        return self.results.get(column, {}).get(key)

    def peer_label(self, found: FoundPeer) -> str:
        version = next(
            (
                str(a["version"])
                for a in self.results.get(found.name, {}).values()
                if "version" in a
            ),
            None,
        )
        pinned = found.name.rpartition("-")[2]
        if version is None:
            return found.name
        if found.peer.title == "LlamaIndex":
            newest = "" if version == pinned else " (latest)"
            return f"{found.peer.title} {version}{newest}"
        return f"{found.peer.title} {version}"

    def floor_choice(self, row: Row) -> tuple[str, float] | None:
        """The floor metric with the smallest median for this row, and that median."""
        figures = [(m, self.row_figure(row, FLOOR, m)) for m in row.floors]
        present = [(m, v) for m, v in figures if v is not None]
        return min(present, key=lambda item: item[1]) if present else None

    def row_figure(self, row: Row, column: str, metric: str, which: str = "median") -> float | None:
        if row.scaling_of is not None:
            large, small = (stat(self.answer(column, k), metric, which) for k in row.scaling_of)
            return ratio(large, small)
        return stat(self.answer(column, row.key), metric, which)

    def figure(self, row: Row, column: str) -> float | None:
        """The row's median figure in a column (the floor: its fastest floor)."""
        if column == FLOOR:
            choice = self.floor_choice(row)
            return None if choice is None else choice[1]
        if column != ENGINE and row.peer_metric == "":
            return None
        metric = row.metric if column == ENGINE else (row.peer_metric or row.metric)
        return self.row_figure(row, column, metric)

    def plain(self, row: Row) -> float | None:
        return None if row.plain_metric is None else self.row_figure(row, FLOOR, row.plain_metric)

    def missing(self, column: str, key: str) -> str:
        """A cell's reason for having no figure, with a numbered note for the detail."""
        full = reason(self.answer(column, key)) or "-"
        short = short_reason(full)
        if short == full:
            return short
        note = f"{column}: {full}"
        if note not in self.notes:
            self.notes.append(note)
        return f"{short} [{self.notes.index(note) + 1}]"

    def cell(self, row: Row, column: str, metric: str | None = None) -> str:
        """median [min-max] of a column's figure, or why there is none."""
        metric = metric or (row.metric if column == ENGINE else row.peer_metric or row.metric)
        if column == FLOOR and metric == row.metric:
            choice = self.floor_choice(row)
            metric = choice[0] if choice else row.floors[0]
        value = self.row_figure(row, column, metric)
        if value is None:
            return "-" if row.scaling_of is not None else self.missing(column, row.key)
        if row.scaling_of is not None:
            return format_figure(value, row.unit)
        low, high = (self.row_figure(row, column, metric, w) for w in ("min", "max"))
        text = format_spread(value, low, high, row.unit)
        if column == FLOOR and len(row.floors) > 1 and metric in row.floors:
            text += f" {FLOOR_NAMES.get(metric, metric)}"
        return text

    # -- the tables ---------------------------------------------------------------------

    def main_lines(self) -> list[list[str]]:
        header = ["scenario", ENGINE, "tight trio floor", "engine/floor", "plain loop"]
        header.append("engine/plain")
        lines = [header]
        for row in self.rows:
            plain = None if row.scaling_of else self.plain(row)
            floor = None if row.scaling_of else self.figure(row, FLOOR)
            lines.append(
                [
                    row.label,
                    self.cell(row, ENGINE),
                    self.cell(row, FLOOR),
                    format_ratio(ratio(self.figure(row, ENGINE), floor)),
                    "" if row.plain_metric is None else self.cell(row, FLOOR, row.plain_metric),
                    format_ratio(None if plain is None else ratio(self.figure(row, ENGINE), plain)),
                ]
            )
        return lines

    def peer_rows(self) -> list[Row]:
        """Main-table rows some peer has a figure or a reason for."""
        return [
            row
            for row in self.rows
            if row.peer_metric != ""
            and any(
                (row.scaling_of and all(k in self.results.get(p.name, {}) for k in row.scaling_of))
                or row.key in self.results.get(p.name, {})
                for p in self.peers
            )
        ]

    def peer_cell(self, row: Row, found: FoundPeer) -> str:
        """The peer's median, and how many times faster blazen_trio is: `7.42 s (53.8x)`."""
        value = self.figure(row, found.name)
        if value is None:
            keys = row.scaling_of or (row.key,)
            if not all(k in self.results.get(found.name, {}) for k in keys):
                return "-"
            return "-" if row.scaling_of else self.missing(found.name, row.key)
        text = format_figure(value, row.unit)
        faster = ratio(value, self.figure(row, ENGINE))
        return text if row.scaling_of or faster is None else f"{text} ({faster:.1f}x)"

    def peer_lines(self) -> list[list[str]]:
        header = ["scenario", ENGINE, *(self.peer_label(p) for p in self.peers)]
        lines = [header]
        for row in self.peer_rows():
            engine = self.figure(row, ENGINE)
            shown = "-" if engine is None else format_figure(engine, row.unit)
            lines.append([row.label, shown, *(self.peer_cell(row, p) for p in self.peers)])
        return lines

    def implementation(self, row: DurableRow) -> str:
        if row.column == FLOOR:
            if row.key.startswith("walhop"):
                return "stdlib sqlite3, each commit awaited via trio.to_thread"
            return "stdlib sqlite3, the whole loop in one worker thread"
        if row.column == ENGINE:
            return {
                "none": "blazen_trio, no store",
                "memory": "blazen_trio, MemoryCheckpointStore",
            }.get(row.setting, f'blazen_trio, SqliteCheckpointStore(durability="{row.setting}")')
        found = next((p for p in self.peers if p.name == row.column), None)
        label = row.column if found is None else self.peer_label(found)
        if row.column == "langgraph":
            saver = "AsyncSqliteSaver" if row.key.startswith("druns") else "SqliteSaver"
            return f"{label}, {saver}"
        return label

    def settings(self, row: DurableRow) -> str:
        """The SQLite settings of a row: as the peer read them back, else as configured."""
        if row.setting in ("none", "memory"):
            return "-"
        told = (self.answer(row.column, row.key) or {}).get("settings")
        if isinstance(told, dict):
            mode = str(told.get("journal_mode", "?"))
            level = told.get("synchronous")
            sync = SYNCHRONOUS.get(level, "?") if isinstance(level, int) else "?"
            journal = "WAL" if mode == "wal" else f"rollback journal ({mode})"
            return f"{journal}, synchronous={sync} (read back)"
        return f"WAL, synchronous={row.setting.upper()}"

    def baseline_key(self, row: DurableRow) -> str | None:
        """What a row is compared with in its own column: the engine's run with no store, or
        (many-keys chains) the chain with the fewest keys at the same setting."""
        workload = row.key.rsplit("_", 1)[0]
        if workload.startswith("keys"):
            fewest = min(
                (r.key for r in self.durable_rows if r.key.startswith("keys")),
                key=lambda key: int(key.rsplit("_", 1)[0].removeprefix("keys")),
            ).rsplit("_", 1)[0]
            return None if fewest == workload else f"{fewest}_{row.setting}"
        if row.column == ENGINE and row.setting != "none":
            return f"{workload}_none"
        return None

    def durable_figure(self, column: str, key: str, which: str = "median") -> float | None:
        return stat(self.answer(column, key), "per_step", which)

    def durable_lines(self) -> list[list[str]]:
        header = ["workload", "implementation", "SQLite settings", "per step [min-max]"]
        header += ["/ WAL commit", "/ baseline", "peer / blazen_trio"]
        lines = [header]
        for row in self.durable_rows:
            value = self.durable_figure(row.column, row.key)
            if value is None:
                shown = self.missing(row.column, row.key)
            else:
                low, high = (self.durable_figure(row.column, row.key, w) for w in ("min", "max"))
                shown = format_spread(value, low, high, "s")
            wal = None if row.wal_key is None else self.durable_figure(FLOOR, row.wal_key)
            baseline = self.baseline_key(row)
            own = None if baseline is None else self.durable_figure(row.column, baseline)
            engine = (
                self.durable_figure(ENGINE, row.key) if row.column not in (ENGINE, FLOOR) else None
            )
            lines.append(
                [
                    row.workload,
                    self.implementation(row),
                    self.settings(row),
                    shown,
                    format_ratio(None if row.column == FLOOR else ratio(value, wal)),
                    format_ratio(ratio(value, own)),
                    format_ratio(ratio(value, engine)),
                ]
            )
        return lines

    def scaleout_peers(self) -> list[FoundPeer]:
        return [p for p in self.peers if "scaleout" in p.peer.scenarios]

    def rate_cell(self, column: str, key: str) -> str:
        """Runs per second, median [min-max], or why there is no figure."""
        answer = self.answer(column, key)
        value = stat(answer, "runs_per_s")
        if value is None:
            return self.missing(column, key)
        low, high = (stat(answer, "runs_per_s", which) for which in ("min", "max"))
        return f"{value:,.0f} [{low:,.0f}-{high:,.0f}]"

    def latency_cell(self, column: str, key: str) -> str:
        """Submit-to-result latency, median / p95 (each the median over rounds)."""
        median, p95 = (stat(self.answer(column, key), m) for m in SCALEOUT_LATENCIES)
        if median is None or p95 is None:
            return self.missing(column, key)
        return f"{format_figure(median, 's')} / {format_figure(p95, 's')}"

    def scaleout_lines(self) -> list[list[str]]:
        header = ["worker processes x runs at once", f"{ENGINE} runs/s [min-max]"]
        header.append(f"{ENGINE} latency p50 / p95")
        for found in self.scaleout_peers():
            label = self.peer_label(found)
            header += [f"{label} runs/s", f"runs/s {ENGINE} / {label}"]
            header += [f"{label} latency p50 / p95", f"p50 {label} / {ENGINE}"]
        lines = [header]
        for plan in self.scaleout:
            key, params = plan.key, plan.params
            line = [f"{params['workers']} x {params['concurrency']}"]
            line += [self.rate_cell(ENGINE, key), self.latency_cell(ENGINE, key)]
            engine_rate = stat(self.answer(ENGINE, key), "runs_per_s")
            engine_p50 = stat(self.answer(ENGINE, key), "latency_median")
            for found in self.scaleout_peers():
                peer = self.answer(found.name, key)
                line += [
                    self.rate_cell(found.name, key),
                    format_ratio(ratio(engine_rate, stat(peer, "runs_per_s"))),
                    self.latency_cell(found.name, key),
                    format_ratio(ratio(stat(peer, "latency_median"), engine_p50)),
                ]
            lines.append(line)
        return lines

    def scaleout_note(self) -> str:
        """What the scale-out figures ran on: one server, both engines."""
        plan = self.scaleout[0]
        sizes = (
            f"{plan.params['runs']:,} runs submitted at once per round (runs/s: first submit "
            f"to last result), then {plan.params['latency_runs']} single runs one at a time "
            "(latency: submit to result)"
        )
        if self.postgres is None:
            return f"Scale-out: {sizes}."
        settings = ", ".join(f"{name}={value}" for name, value in self.postgres.items())
        return f"Scale-out: {sizes}; every engine on one PostgreSQL server ({settings})."

    def render(self) -> str:
        self.notes = []
        parts = [render(self.main_lines())] if self.rows else []
        if self.peers and len(self.peer_lines()) > 1:
            parts.append(render(self.peer_lines()))
        if self.durable_rows:
            parts.append(render(self.durable_lines()))
        if self.scaleout:
            parts.append(render(self.scaleout_lines()) + "\n" + self.scaleout_note())
        notes = [f"[{i}] {note}" for i, note in enumerate(self.notes, start=1)]
        return "\n\n".join(parts) + ("\n" + "\n".join(notes) if notes else "")

    def json_tables(self) -> dict[str, object]:
        self.notes = []
        tables = {
            "main": self.main_lines(),
            "peers": self.peer_lines(),
            "durability": self.durable_lines(),
            "scaleout": self.scaleout_lines(),
        }
        return {"tables": tables, "notes": list(self.notes)}


LEGEND = """\
Figures: median of the kept rounds [min-max over those rounds]; lower is better. \
engine/floor = blazen_trio / the tight bare-Trio floor (1.00x = no overhead); the fan-out \
floor is the faster of a limiter-gated spawn and a worker pool (the cell names it). \
engine/plain = blazen_trio / the same work as a plain Python loop. Peer cells: the peer's \
median (peer / blazen_trio: above 1x, blazen_trio is faster or smaller). pydantic-graph \
and Burr fan out with no concurrency cap. Durability: per step = wall time / step \
invocations; / WAL commit = against one raw SQLite WAL commit at the same synchronous \
setting (the loop in one thread); / baseline = against the same workload with no store \
(blazen_trio's stores) or with the fewest keys (many-keys chains). Scale-out: runs per \
second of N worker processes (higher is better), median [min-max] over rounds, and the \
submit-to-result latency of single runs, median / p95; the ratios are blazen_trio's runs/s \
over the peer's, and the peer's median latency over blazen_trio's (above 1x, blazen_trio \
is ahead). Method and raw samples: the JSON."""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


PACKAGES = ("blazen_trio", "trio", "msgspec", "attrs", "cattrs", "psycopg", "psycopg-pool")
"""The versions the JSON reports (psycopg: the scale-out scenario's driver)."""


def machine() -> dict[str, object]:
    """Where the figures come from: they mean nothing without it."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": {p: _version(p) for p in PACKAGES},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def report_json(report: Report, mode: Mode, rounds: int, plans: list[Plan]) -> dict[str, object]:
    return {
        "suite": "blazen_trio benchmarks",
        "mode": mode.name,
        "rounds": rounds,
        "warmup": mode.warmup,
        "budget_s": mode.budget_s,
        "timeout_s": mode.timeout_s,
        "peer_timeout_s": mode.peer_timeout_s,
        "durable_peer_timeout_s": mode.durable_peer_timeout_s,
        "machine": machine(),
        "postgres": report.postgres,
        "method": METHOD,
        "peers": {
            p.name: {
                "label": report.peer_label(p),
                "python": None if p.python is None else str(p.python),
                "requirements": list(p.peer.requirements),
                "missing": None if p.python is not None else p.missing,
            }
            for p in report.peers
        },
        "jobs": {plan.key: {"scenario": plan.scenario, **plan.params} for plan in plans},
        **report.json_tables(),
        "results": report.results,
    }


def write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
