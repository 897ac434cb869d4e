"""What the suite measures: the jobs (scenario + sizes), the tables' rows, the two modes."""

import attrs

from benchmarks._measure import Job

ENGINE = "blazen_trio"
FLOOR = "trio floor"
"""The two columns measured in this process; peers are named by their venv (`_peers.PEERS`)."""


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
    durable_chain: int  # steps of one durable run
    durable_runs: int  # concurrent durable runs ...
    durable_run_steps: int  # ... of this many steps each
    keys_steps: int  # steps of the durable chain whose state holds many keys
    keys_small: int
    keys_large: int
    wal_commits: int  # commits per round of the raw SQLite loop
    scaleout_workers: tuple[int, ...]  # worker processes of each scale-out job ...
    scaleout_concurrency: int  # ... each driving this many runs at once
    scaleout_runs: int  # runs submitted at once, per round (throughput)
    scaleout_latency_runs: int  # single runs one at a time, per round (latency)
    scaleout_budget_s: float  # a scale-out round lasts seconds: a budget of its own
    scaleout_timeout_s: float  # a scale-out job (either engine) is cut off after this
    rounds: int
    warmup: int
    budget_s: float  # no new round starts after this long (one round is always kept)
    timeout_s: float  # a job of blazen_trio or of the floor is cut off after this
    peer_timeout_s: float  # a peer's subprocess is killed after this
    durable_peer_timeout_s: float  # the same for the durability jobs (DBOS is slow)

    def own_timeout_s(self, scenario: str) -> float:
        """When a job of blazen_trio or of the floor is cut off."""
        return self.scaleout_timeout_s if scenario == "scaleout" else self.timeout_s

    def peer_timeout(self, scenario: str) -> float:
        """When a peer's subprocess is killed."""
        if scenario == "scaleout":
            return self.scaleout_timeout_s
        return self.durable_peer_timeout_s if scenario == "durable" else self.peer_timeout_s


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
    durable_chain=1_000,
    durable_runs=1_000,
    durable_run_steps=10,
    keys_steps=512,  # the compaction after the big first commit falls in the timed part
    keys_small=10,
    keys_large=100_000,
    wal_commits=1_000,
    scaleout_workers=(1, 2, 4),
    scaleout_concurrency=10,
    scaleout_runs=2_000,
    scaleout_latency_runs=50,
    scaleout_budget_s=60.0,
    scaleout_timeout_s=400.0,
    rounds=5,
    warmup=1,
    budget_s=15.0,
    timeout_s=120.0,
    peer_timeout_s=90.0,
    durable_peer_timeout_s=240.0,
)

QUICK = Mode(
    name="quick",
    chain=2_000,
    fanout_small=100,
    fanout_large=1_000,
    workers=8,
    runs=1_000,
    stream_events=20_000,
    stream_subscribers=10,
    snapshot_keys=1_000,
    snapshot_events=1_000,
    pause_steps=200,
    durable_chain=200,
    durable_runs=100,
    durable_run_steps=10,
    keys_steps=300,  # the compaction after the big first commit falls in the timed part
    keys_small=10,
    keys_large=10_000,
    wal_commits=200,
    scaleout_workers=(1, 2),
    scaleout_concurrency=10,
    scaleout_runs=100,
    scaleout_latency_runs=10,
    scaleout_budget_s=2.0,
    scaleout_timeout_s=40.0,
    rounds=2,
    warmup=1,
    budget_s=2.0,
    timeout_s=20.0,
    peer_timeout_s=20.0,
    durable_peer_timeout_s=30.0,
)


@attrs.frozen
class Plan:
    """One job per key; each is measured once per column that runs it and feeds rows.

    `columns` names the columns that run the job; None means the floor, the engine and every
    peer whose scenarios include this one.
    """

    scenario: str
    key: str
    params: dict[str, object]
    columns: frozenset[str] | None = None

    def job(self, mode: Mode, rounds: int, timeout_s: float) -> Job:
        """The job as JSON; `params` may set its own `warmup` and `budget_s`."""
        return {
            "scenario": self.scenario,
            "warmup": mode.warmup,
            "budget_s": mode.budget_s,
            **self.params,
            "rounds": rounds,
            "timeout_s": timeout_s,
        }


SCENARIOS = ("chain", "fanout", "runs", "stream", "snapshot", "pause", "durable", "scaleout")

FRESH_PROCESS = frozenset({"runs", "scaleout"})
"""Scenarios measured in a fresh subprocess for every engine (peak RSS is a high-water mark)."""

API = {
    "chain": "Workflow.run",
    "fanout": "collect_events",
    "runs": "Workflow.run",
    "stream": "handler.stream_events",
    "snapshot": "handler.pause/snapshot",
    "pause": "handler.pause",
    "durable": "Workflow(checkpoint_store=)",
    "scaleout": "Worker / WorkflowClient",
}
"""The engine API each scenario needs, named in "n/a (engine lacks ...)"."""

STORES = ("none", "memory", "normal", "full")
"""blazen_trio's durability settings: no store, MemoryCheckpointStore, SqliteCheckpointStore."""

SYNCS = ("normal", "full")
"""The SQLite durability settings every SQLite-backed column is measured at."""

DBOS_DEFAULTS = "default"
"""DBOS's own SQLite settings (rollback journal, synchronous=FULL), measured on the chain."""


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
            "stream",
            "stream_many_iterate",
            {"n": mode.stream_events, "subscribers": mode.stream_subscribers, "reader": "iterate"},
            frozenset({ENGINE, FLOOR}),
        ),
        Plan(
            "snapshot",
            "snapshot",
            {"keys": mode.snapshot_keys, "events": mode.snapshot_events},
        ),
        Plan("pause", "pause_wait", {"n": mode.pause_steps, "mode": "wait"}),
        Plan("pause", "pause_cancel", {"n": mode.pause_steps, "mode": "cancel"}),
        *durable_plans(mode),
        *scaleout_plans(mode),
    ]


def _durable(key: str, params: dict[str, object], store: str, columns: set[str]) -> Plan:
    return Plan("durable", f"{key}_{store}", {**params, "store": store}, frozenset(columns))


def durable_plans(mode: Mode) -> list[Plan]:
    """The durability jobs: which columns run which setting is part of the plan."""
    chain = {"shape": "chain", "steps": mode.durable_chain, "runs": 1}
    runs = {"shape": "runs", "steps": mode.durable_run_steps, "runs": mode.durable_runs}
    peers = {"dbos", "langgraph"}
    out = [
        _durable(shape, {"shape": shape, "commits": mode.wal_commits}, s, {FLOOR})
        for shape in ("wal", "walhop")
        for s in SYNCS
    ]
    for key, params in (("dchain", chain), ("druns", runs)):
        out += [
            _durable(key, params, s, {ENGINE} | (peers if s in SYNCS else set())) for s in STORES
        ]
        if key == "dchain":
            out.append(_durable(key, params, DBOS_DEFAULTS, {"dbos"}))
    for keys in (mode.keys_small, mode.keys_large):
        params = {"shape": "keys", "steps": mode.keys_steps, "runs": 1, "keys": keys}
        out += [_durable(f"keys{keys}", params, s, {ENGINE, "langgraph"}) for s in SYNCS]
    return out


def scaleout_plans(mode: Mode) -> list[Plan]:
    """One job per worker count, for blazen_trio and DBOS; each warms its fleet up itself."""
    params = {
        "concurrency": mode.scaleout_concurrency,
        "runs": mode.scaleout_runs,
        "latency_runs": mode.scaleout_latency_runs,
        "warmup": 0,
        "budget_s": mode.scaleout_budget_s,
    }
    return [
        Plan(
            "scaleout",
            f"scaleout_w{n}",
            {**params, "workers": n, "warmup_runs": 2 * n * mode.scaleout_concurrency},
            frozenset({ENGINE, "dbos"}),
        )
        for n in mode.scaleout_workers
    ]


@attrs.frozen
class Row:
    """A row of the main table: one metric of one job, compared with the floor's.

    The floor's figure is the smallest median among `floor_metrics` (fan-out has two floors),
    and the cell says which one it was when there are several.
    """

    label: str
    key: str
    metric: str
    unit: str  # "s", "bytes", "KiB" or "x" (a ratio)
    floor_metrics: tuple[str, ...] = ()  # defaults to (metric,)
    plain_metric: str | None = None  # the floor's plain-loop figure (no Trio at all)
    peer_metric: str | None = None  # defaults to `metric`; "" = peers have no such figure
    scaling_of: tuple[str, str] | None = None  # a derived row: time of job [0] / job [1]

    @property
    def floors(self) -> tuple[str, ...]:
        return self.floor_metrics or (self.metric,)


FANOUT_FLOORS = ("spawn_time", "pool_time")
"""Fan-out's two tight floors: limiter-gated spawn and a pool of `workers` tasks."""


def rows(mode: Mode) -> list[Row]:
    snap = f"snapshot {mode.snapshot_keys:,} keys + {mode.snapshot_events:,} pending"
    large, small = mode.fanout_large, mode.fanout_small
    fan = f"-> max_concurrency={mode.workers} -> collect_events"
    pause = f"pause to quiescent, {mode.pause_steps:,} steps in flight"
    return [
        Row(f"chain of {mode.chain:,} sequential steps", "chain", "time", "s", (), "plain_time"),
        Row(f"fan-out {small:,} {fan}", "fanout_small", "time", "s", FANOUT_FLOORS, "plain_time"),
        Row(f"fan-out {large:,} {fan}", "fanout_large", "time", "s", FANOUT_FLOORS, "plain_time"),
        Row(
            f"fan-out scaling: time {large:,} / time {small:,}",
            "",
            "time",
            "x",
            FANOUT_FLOORS,
            "plain_time",
            scaling_of=("fanout_large", "fanout_small"),
        ),
        Row(f"{mode.runs:,} concurrent trivial runs", "runs", "time", "s", (), "plain_time"),
        Row(
            "  same, against the floor plus a nursery and a cancel scope per run (the design)",
            "runs",
            "time",
            "s",
            ("nursery_time",),
            peer_metric="",
        ),
        Row("  memory per idle run (RSS growth / parked run)", "runs", "kib_per_idle_run", "KiB"),
        Row(
            f"stream {mode.stream_events:,} events -> 1 subscriber",
            "stream_one",
            "time",
            "s",
            (),
            "plain_time",
        ),
        Row(
            f"stream {mode.stream_events:,} events -> {mode.stream_subscribers} subscribers",
            "stream_many",
            "time",
            "s",
            (),
            "plain_time",
        ),
        Row(
            "  same, each read an `async for` step (the floor's reader is still batched)",
            "stream_many_iterate",
            "time",
            "s",
            peer_metric="",
        ),
        Row(
            f"{snap}, MessagePack enc+dec (floor: pickle)",
            "snapshot",
            "msgpack_time",
            "s",
            ("pickle_time",),
            peer_metric="",
        ),
        Row(
            "  same, MessagePack size (floor: pickle)",
            "snapshot",
            "msgpack_bytes",
            "bytes",
            ("pickle_bytes",),
            peer_metric="",
        ),
        Row(f"{snap}, JSON enc+dec (floor: stdlib json)", "snapshot", "json_time", "s"),
        Row("  same, JSON size (floor: stdlib json)", "snapshot", "json_bytes", "bytes"),
        Row(f"{pause}, wait mode", "pause_wait", "latency", "s"),
        Row(f"{pause}, cancel mode", "pause_cancel", "latency", "s"),
    ]


@attrs.frozen
class DurableRow:
    """A row of the durability table: one column's figure for one durability job."""

    workload: str
    key: str  # the job key, `<workload key>_<setting>`
    column: str
    setting: str  # one of STORES, or DBOS_DEFAULTS

    @property
    def wal_key(self) -> str | None:
        """The raw WAL commit job at the same durability (DBOS's defaults sync FULL too)."""
        if self.setting in SYNCS:
            return f"wal_{self.setting}"
        return "wal_full" if self.setting == DBOS_DEFAULTS else None


def durable_rows(mode: Mode) -> list[DurableRow]:
    """One row per (workload, column, setting), in the order of `durable_plans`."""
    runs = f"{mode.durable_runs:,} concurrent runs x {mode.durable_run_steps} durable steps"
    workloads = {
        "wal": f"raw SQLite WAL commit (insert + commit loop, {mode.wal_commits:,} commits)",
        "walhop": f"raw SQLite WAL commit (insert + commit loop, {mode.wal_commits:,} commits)",
        "dchain": f"chain of {mode.durable_chain:,} durable steps",
        "druns": runs,
        **{
            f"keys{k}": f"chain of {mode.keys_steps} durable steps, state of {k:,} keys"
            for k in (mode.keys_small, mode.keys_large)
        },
    }
    out = []
    for plan in durable_plans(mode):
        workload, setting = plan.key.rsplit("_", 1)
        for column in sorted(plan.columns or (), key=_column_order):
            out.append(DurableRow(workloads[workload], plan.key, column, setting))
    return out


def _column_order(column: str) -> tuple[int, str]:
    return ({FLOOR: 0, ENGINE: 1}.get(column, 2), column)
