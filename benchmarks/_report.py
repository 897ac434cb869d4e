"""The printed table and the JSON file: medians, ratios, and why a figure is missing."""

import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from benchmarks._plan import Mode, Plan, Row

ENGINE = "blazen_trio"
FLOOR = "trio floor"

Answer = dict[str, object]
"""A job's answer for one column: `samples` (+ `median`), or the reason there are none."""

Results = dict[str, dict[str, Answer]]
"""column -> job key -> answer."""

REASONS = ("unsupported", "gave_up", "timeout", "error", "missing")

METHOD = {
    "time": "wall time (time.perf_counter) of the measured part of each round, median of the "
    "kept rounds; each round runs in its own event loop (trio.run / asyncio.run)",
    "memory": "RSS growth (/proc/self/statm; getrusage ru_maxrss where /proc is missing) from "
    "before the runs to the moment all of them are parked inside their step at once (their "
    "peak), divided by the number of runs; in a fresh process per engine, after 100 warm-up "
    "runs",
    "floor": "the same work with bare Trio: one memory channel, one task per event, "
    "trio.CapacityLimiter for max_concurrency; for snapshots, stdlib json / pickle of the "
    "same state and pending events as plain dicts (less metadata than an engine snapshot)",
    "streaming": "subscriber buffers sized to be lossless in every engine; the producer yields "
    "every 64 events; LlamaIndex streams to one consumer per run, so its 'many subscribers' "
    "figure includes a hand fan-out through asyncio.Queue",
    "llama snapshot": "LlamaIndex has no pause: json.dumps(ctx.to_dict()) of a run parked on "
    "one step, and Context.from_dict(json.loads(...))",
}


def add_medians(answer: Answer) -> Answer:
    samples = answer.get("samples")
    if isinstance(samples, dict):
        answer["median"] = {name: statistics.median(values) for name, values in samples.items()}
    return answer


def median(answer: Answer | None, metric: str) -> float | None:
    medians = (answer or {}).get("median")
    if isinstance(medians, dict):
        value = medians.get(metric)
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


def format_figure(value: float, unit: str) -> str:
    if unit == "s":
        for scale, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
            if value >= scale or suffix == "us":
                return f"{value / scale:.3g} {suffix}"
    if unit == "bytes":
        return f"{value / 1024:,.0f} KiB" if value < 1024**2 else f"{value / 1024**2:.2f} MiB"
    if unit == "KiB":
        return f"{value:.1f} KiB"
    return f"{value:.2f}x"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


class Table:
    """Builds the rows' figures once; renders them as text and as JSON."""

    def __init__(self, results: Results, rows: list[Row], peers: list[str]) -> None:
        self.results = results
        self.rows = rows
        self.peers = peers
        self.notes: list[str] = []

    def peer_label(self, peer: str) -> str:
        version = next(
            (str(a["version"]) for a in self.results.get(peer, {}).values() if "version" in a),
            None,
        )
        short = peer.removeprefix("llama-")
        if version is None or version == short:
            return peer.replace("-", " ")
        return f"llama {version} ({short})"

    def figure(self, row: Row, column: str) -> float | None:
        answers = self.results.get(column, {})
        if row.scaling_of is not None:
            large, small = (median(answers.get(key), "time") for key in row.scaling_of)
            return None if large is None or small is None or small <= 0 else large / small
        metric = row.metric
        if column == FLOOR:
            metric = row.floor_metric or row.metric
        elif column != ENGINE:
            if row.peer_metric == "":
                return None
            metric = row.peer_metric or row.metric
        return median(answers.get(row.key), metric)

    def cell(self, row: Row, column: str) -> str:
        value = self.figure(row, column)
        if value is not None:
            return format_figure(value, row.unit)
        if row.scaling_of is not None or (column not in (ENGINE, FLOOR) and row.peer_metric == ""):
            return "-"
        full = reason(self.results.get(column, {}).get(row.key)) or "-"
        short = short_reason(full)
        if short != full:
            note = f"{column}: {full}"
            if note not in self.notes:
                self.notes.append(note)
            short += f" [{self.notes.index(note) + 1}]"
        return short

    def ratios(self, row: Row) -> list[float | None]:
        """engine/floor, then peer/engine for each peer (None where a figure is missing)."""
        if row.scaling_of is not None:
            return [None] * (1 + len(self.peers))
        engine = self.figure(row, ENGINE)
        peer_ratios = [_ratio(self.figure(row, peer), engine) for peer in self.peers]
        return [_ratio(engine, self.figure(row, FLOOR)), *peer_ratios]

    def header(self) -> list[str]:
        peer_ratios = [f"{p.removeprefix('llama-')}/engine" for p in self.peers]
        columns = [ENGINE, FLOOR, *(self.peer_label(p) for p in self.peers)]
        return ["scenario", *columns, "engine/floor", *peer_ratios]

    def lines(self) -> list[list[str]]:
        columns = [ENGINE, FLOOR, *self.peers]
        return [
            [
                row.label,
                *(self.cell(row, c) for c in columns),
                *("" if r is None else f"{r:.2f}x" for r in self.ratios(row)),
            ]
            for row in self.rows
        ]

    def render(self) -> str:
        table = [self.header(), *self.lines()]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]

        def fmt(line: list[str]) -> str:
            cells = [
                text.ljust(width) if i == 0 else text.rjust(width)
                for i, (text, width) in enumerate(zip(line, widths, strict=True))
            ]
            return "| " + " | ".join(cells) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        out = [fmt(table[0]), rule, *(fmt(line) for line in table[1:])]
        out += [f"[{i}] {note}" for i, note in enumerate(self.notes, start=1)]
        return "\n".join(out)

    def json_rows(self) -> list[dict[str, object]]:
        columns = [ENGINE, FLOOR, *self.peers]
        return [
            {
                "label": row.label.strip(),
                "unit": row.unit,
                "figures": {c: self.figure(row, c) for c in columns},
                "ratios": dict(
                    zip(self.header()[len(columns) + 1 :], self.ratios(row), strict=True)
                ),
            }
            for row in self.rows
        ]


LEGEND = """\
Figures: median of the kept rounds (lower is better). engine/floor = blazen_trio / bare Trio \
(1.00x = no overhead). X/engine = peer / blazen_trio (how many times faster blazen_trio is). \
Fan-out scaling = time at the large size / time at the small one. Memory: RSS growth per run \
with all runs parked at once, fresh process per engine. Snapshot floor = stdlib json / pickle \
of the same data. Method details and raw samples: the JSON file."""


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


def machine() -> dict[str, object]:
    """Where the figures come from: they mean nothing without it."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": {p: _version(p) for p in ("blazen_trio", "trio", "msgspec", "attrs", "cattrs")},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def report_json(
    table: Table, mode: Mode, rounds: int, plans: list[Plan], peer_python: dict[str, str]
) -> dict[str, object]:
    return {
        "suite": "blazen_trio benchmarks",
        "mode": mode.name,
        "rounds": rounds,
        "warmup": mode.warmup,
        "budget_s": mode.budget_s,
        "timeout_s": mode.timeout_s,
        "peer_timeout_s": mode.peer_timeout_s,
        "machine": machine(),
        "method": METHOD,
        "peers": {
            peer: {"label": table.peer_label(peer), "python": peer_python.get(peer)}
            for peer in table.peers
        },
        "jobs": {plan.key: {"scenario": plan.scenario, **plan.params} for plan in plans},
        "rows": table.json_rows(),
        "results": table.results,
    }


def write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
