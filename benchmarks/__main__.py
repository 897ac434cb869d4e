"""`python -m benchmarks`: measure blazen_trio, the Trio floor and the peers; print, save JSON.

Jobs run one after another (never in parallel, so they do not share the CPU): the floor and the
engine in this process, their rounds interleaved (fresh-process scenarios: one child each, one
after the other), each peer in a subprocess of its own venv. Exit status 1 if the floor or the
engine failed a job; peers never fail the suite.
"""

import argparse
import contextlib
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._child import load_scenarios
from benchmarks._measure import Job, Prepare, measure_side_by_side
from benchmarks._peers import DEFAULT_PEERS_DIR, FoundPeer, find_peers, run_child, setup_peers
from benchmarks._pgserver import Cluster, ServerUnavailable, bench_server
from benchmarks._plan import (
    API,
    ENGINE,
    FLOOR,
    FRESH_PROCESS,
    FULL,
    QUICK,
    SCENARIOS,
    Mode,
    Plan,
    Row,
    durable_rows,
    plans,
    rows,
)
from benchmarks._report import (
    LEGEND,
    Answer,
    Report,
    Results,
    add_stats,
    reason,
    report_json,
    write_json,
)

IMPLS = {FLOOR: "floor", ENGINE: "engine"}
"""Our own columns, and what `load_scenarios` calls each."""

CHILD_SLACK_S = 10.0
"""Our own children stop themselves at the job timeout; the kill comes this much later."""


def _peer_override(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _scenario_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario {unknown}; pick from {SCENARIOS}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds (CI smoke)")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        metavar="PATH",
        help="where to write the raw figures (default: bench-results.json)",
    )
    parser.add_argument(
        "--rounds", type=int, metavar="N", help="kept rounds per job (default: 5, quick: 2)"
    )
    parser.add_argument(
        "--only",
        type=_scenario_list,
        action="extend",
        metavar="SCENARIO[,...]",
        help=f"run only these scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--peer-python",
        type=_peer_override,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="python of a peer venv (overrides PEERS_DIR/NAME)",
    )
    parser.add_argument(
        "--peers-dir",
        type=Path,
        default=DEFAULT_PEERS_DIR,
        metavar="DIR",
        help="where the peer venvs live (default: .bench-peers at the repo root)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the peer engines")
    parser.add_argument(
        "--setup-peers",
        type=Path,
        metavar="DIR",
        help="create/refresh the peer venvs in DIR with pip, then exit",
    )
    return parser.parse_args(argv)


def _own_answers(plan: Plan, job: Job, columns: Sequence[str]) -> dict[str, Answer]:
    """The floor's and the engine's answers for one job: their rounds interleaved in this
    process, so a change in the machine's speed weighs on both alike; a fresh-process
    scenario runs one child per column, one after the other."""
    impls = {column: IMPLS[column] for column in columns}
    if plan.scenario in FRESH_PROCESS:
        # The child stops itself at the job's deadline; the kill is only a backstop.
        backstop = job["timeout_s"] + CHILD_SLACK_S
        return {
            column: run_child(sys.executable, "benchmarks._child", {**job, "impl": impl}, backstop)
            for column, impl in impls.items()
        }
    answers: dict[str, Answer] = {}
    prepares: dict[str, Prepare] = {}
    for column, impl in impls.items():
        scenarios = load_scenarios(impl)
        if isinstance(scenarios, str):
            answers[column] = {"unsupported": scenarios}
        else:
            prepares[column] = scenarios[plan.scenario]
    gc.collect()
    answers.update(measure_side_by_side(prepares, job, API[plan.scenario]))
    return answers


def _progress(plan: Plan, column: str, answer: Answer, started: float) -> None:
    medians = answer.get("median")
    if isinstance(medians, dict):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in medians.items())
    else:
        shown = reason(answer) or "?"
    took = time.perf_counter() - started
    print(f"  {plan.key:<13} {column:<13} ({took:5.1f}s) {shown}", file=sys.stderr, flush=True)


def _runs(plan: Plan, column: str, found: FoundPeer | None) -> bool:
    """Whether `column` measures this job: as the plan says, else by the peer's scenarios."""
    if plan.columns is not None:
        return column in plan.columns
    return found is None or plan.scenario in found.peer.scenarios


Server = Cluster | str | None
"""The scale-out jobs' PostgreSQL server, why there is none, or None: no such job selected."""


def open_server(selected: list[Plan], stack: contextlib.ExitStack) -> Server:
    """One server for every scale-out job of the run (both engines), stopped with `stack`."""
    if not any(plan.scenario == "scaleout" for plan in selected):
        return None
    try:
        return stack.enter_context(bench_server())
    except ServerUnavailable as exc:
        return f"unavailable: {exc}"


def _job(plan: Plan, mode: Mode, rounds: int, timeout_s: float, server: Server) -> Job:
    """The job as a column gets it; a scale-out job also names the server."""
    job = plan.job(mode, rounds, timeout_s)
    return {**job, "dsn": server.dsn} if isinstance(server, Cluster) else job


def collect(
    selected: list[Plan], mode: Mode, rounds: int, peers: list[FoundPeer], server: Server = None
) -> Results:
    results: Results = {ENGINE: {}, FLOOR: {}, **{peer.name: {} for peer in peers}}
    for plan in selected:
        no_server = server if plan.scenario == "scaleout" and isinstance(server, str) else None
        job = _job(plan, mode, rounds, mode.own_timeout_s(plan.scenario), server)
        columns = [column for column in IMPLS if _runs(plan, column, None)]
        started = time.perf_counter()
        own: dict[str, Answer] = (
            {column: {"missing": no_server} for column in columns}
            if no_server
            else _own_answers(plan, job, columns)
        )
        for column in columns:
            results[column][plan.key] = add_stats(own[column])
            _progress(plan, column, results[column][plan.key], started)
        timeout_s = mode.peer_timeout(plan.scenario)
        peer_job = _job(plan, mode, rounds, timeout_s, server)
        for found in peers:
            if not _runs(plan, found.name, found):
                continue
            started = time.perf_counter()
            missing = found.missing if found.python is None else no_server
            answer: Answer = (
                {"missing": missing}
                if missing or found.python is None
                else run_child(found.python, found.peer.module, peer_job, timeout_s)
            )
            results[found.name][plan.key] = add_stats(answer)
            _progress(plan, found.name, answer, started)
    return results


def _failed(results: Results) -> bool:
    return any(
        "error" in answer or "timeout" in answer
        for column in (ENGINE, FLOOR)
        for answer in results[column].values()
    )


def _shown(row: Row, keys: set[str]) -> bool:
    if row.scaling_of is not None:
        return set(row.scaling_of) <= keys
    return row.key in keys


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup_peers is not None:
        setup_peers(args.setup_peers)
        return 0
    mode = QUICK if args.quick else FULL
    rounds = args.rounds or mode.rounds
    only = set(args.only or SCENARIOS)
    selected = [plan for plan in plans(mode) if plan.scenario in only]
    selected_keys = {plan.key for plan in selected}
    peers = [] if args.no_peers else find_peers(args.peers_dir, dict(args.peer_python))
    print(f"blazen_trio benchmarks, {mode.name} mode, {rounds} rounds", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        server = open_server(selected, stack)
        postgres = server.settings() if isinstance(server, Cluster) else None
        results = collect(selected, mode, rounds, peers, server)
    shown = [row for row in rows(mode) if _shown(row, selected_keys)]
    durable = [row for row in durable_rows(mode) if row.key in selected_keys]
    scaleout = [plan for plan in selected if plan.scenario == "scaleout"]
    report = Report(results, shown, durable, peers, scaleout, postgres)
    print(report.render())
    print(LEGEND)
    write_json(args.json, report_json(report, mode, rounds, selected))
    print(f"JSON written to {args.json}")
    return 1 if _failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
