"""What the suite measures: the jobs (scenario + sizes), the table's rows, the two modes."""

import attrs

from benchmarks._measure import Job


@attrs.frozen
class Mode:
    """Sizes and time limits of a whole run of the suite."""

    name: str
    chain: int
    fanout_small: int
    fanout_large: int
    workers: int
    runs: int
    stream_events: int
    stream_subscribers: int
    snapshot_keys: int
    snapshot_events: int
    pause_steps: int
    rounds: int
    warmup: int
    budget_s: float  # no new round starts after this long (one round is always kept)
    timeout_s: float  # a job of blazen_trio or of the floor is cut off after this
    peer_timeout_s: float  # a peer's subprocess is killed after this


FULL = Mode(
    name="full",
    chain=10_000,
    fanout_small=1_000,
    fanout_large=10_000,
    workers=8,
    runs=10_000,
    stream_events=100_000,
    stream_subscribers=100,
    snapshot_keys=10_000,
    snapshot_events=10_000,
    pause_steps=1_000,
    rounds=5,
    warmup=1,
    budget_s=15.0,
    timeout_s=120.0,
    peer_timeout_s=90.0,
)

QUICK = Mode(
    name="quick",
    chain=500,
    fanout_small=30,
    fanout_large=300,
    workers=8,
    runs=300,
    stream_events=5_000,
    stream_subscribers=10,
    snapshot_keys=300,
    snapshot_events=300,
    pause_steps=100,
    rounds=2,
    warmup=1,
    budget_s=2.0,
    timeout_s=20.0,
    peer_timeout_s=20.0,
)


@attrs.frozen
class Plan:
    """One job per key; each is measured once per engine and feeds one or more rows."""

    scenario: str
    key: str
    params: dict[str, object]

    def job(self, mode: Mode, rounds: int, timeout_s: float) -> Job:
        return {
            "scenario": self.scenario,
            **self.params,
            "rounds": rounds,
            "warmup": mode.warmup,
            "budget_s": mode.budget_s,
            "timeout_s": timeout_s,
        }


SCENARIOS = ("chain", "fanout", "runs", "stream", "snapshot", "pause")

FRESH_PROCESS = frozenset({"runs"})
"""Scenarios measured in a fresh subprocess for every engine (peak RSS is a high-water mark)."""

API = {
    "chain": "Workflow.run",
    "fanout": "collect_events",
    "runs": "Workflow.run",
    "stream": "handler.stream_events",
    "snapshot": "handler.pause/snapshot",
    "pause": "handler.pause",
}
"""The engine API each scenario needs, named in "n/a (engine lacks ...)"."""


def plans(mode: Mode) -> list[Plan]:
    return [
        Plan("chain", "chain", {"n": mode.chain}),
        Plan("fanout", "fanout_small", {"n": mode.fanout_small, "workers": mode.workers}),
        Plan("fanout", "fanout_large", {"n": mode.fanout_large, "workers": mode.workers}),
        Plan("runs", "runs", {"n": mode.runs}),
        Plan("stream", "stream_one", {"n": mode.stream_events, "subscribers": 1}),
        Plan(
            "stream",
            "stream_many",
            {"n": mode.stream_events, "subscribers": mode.stream_subscribers},
        ),
        Plan(
            "snapshot",
            "snapshot",
            {"keys": mode.snapshot_keys, "events": mode.snapshot_events},
        ),
        Plan("pause", "pause_wait", {"n": mode.pause_steps, "mode": "wait"}),
        Plan("pause", "pause_cancel", {"n": mode.pause_steps, "mode": "cancel"}),
    ]


@attrs.frozen
class Row:
    """A table row: one metric of one job, compared with the floor's `floor_metric`."""

    label: str
    key: str
    metric: str
    unit: str  # "s", "bytes", "KiB" or "x" (a ratio)
    floor_metric: str | None = None  # defaults to `metric`
    peer_metric: str | None = None  # defaults to `metric`; "" = peers have no such figure
    scaling_of: tuple[str, str] | None = None  # a derived row: time of job [0] / job [1]


def rows(mode: Mode) -> list[Row]:
    snap = f"snapshot {mode.snapshot_keys:,} keys + {mode.snapshot_events:,} pending"
    large, small = mode.fanout_large, mode.fanout_small
    fan = f"-> max_concurrency={mode.workers} -> collect_events"
    pause = f"pause to quiescent, {mode.pause_steps:,} steps in flight"
    return [
        Row(f"chain of {mode.chain:,} sequential steps", "chain", "time", "s"),
        Row(f"fan-out {small:,} {fan}", "fanout_small", "time", "s"),
        Row(f"fan-out {large:,} {fan}", "fanout_large", "time", "s"),
        Row(
            f"fan-out scaling: time {large:,} / time {small:,}",
            "",
            "time",
            "x",
            scaling_of=("fanout_large", "fanout_small"),
        ),
        Row(f"{mode.runs:,} concurrent trivial runs", "runs", "time", "s"),
        Row("  memory per idle run (RSS growth / parked run)", "runs", "kib_per_idle_run", "KiB"),
        Row(f"stream {mode.stream_events:,} events -> 1 subscriber", "stream_one", "time", "s"),
        Row(
            f"stream {mode.stream_events:,} events -> {mode.stream_subscribers} subscribers",
            "stream_many",
            "time",
            "s",
        ),
        Row(
            f"{snap}: MessagePack enc+dec (floor: stdlib json + pickle)",
            "snapshot",
            "msgpack_time",
            "s",
            floor_metric="json_pickle_time",
            peer_metric="",
        ),
        Row(
            "  same, MessagePack enc+dec (floor: stdlib json)",
            "snapshot",
            "msgpack_time",
            "s",
            floor_metric="json_time",
            peer_metric="",
        ),
        Row(
            "  same, MessagePack enc+dec (floor: stdlib pickle)",
            "snapshot",
            "msgpack_time",
            "s",
            floor_metric="pickle_time",
            peer_metric="",
        ),
        Row("  same, JSON enc+dec (floor: stdlib json)", "snapshot", "json_time", "s"),
        Row(
            "  same, MessagePack size (floor: pickle)",
            "snapshot",
            "msgpack_bytes",
            "bytes",
            floor_metric="pickle_bytes",
            peer_metric="",
        ),
        Row("  same, JSON size (floor: stdlib json)", "snapshot", "json_bytes", "bytes"),
        Row(f"{pause}, wait mode", "pause_wait", "latency", "s"),
        Row(f"{pause}, cancel mode", "pause_cancel", "latency", "s"),
    ]
