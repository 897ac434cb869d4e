"""Run one job of the floor or of blazen_trio in a fresh process (for peak-RSS figures).

`python -m benchmarks._child '<job JSON with "impl": "floor" | "engine">'`; one JSON answer on
stdout, the same protocol as the peer drivers.
"""

import json
import sys

from benchmarks._measure import Job, Prepare, emit, measure_job
from benchmarks._plan import API


def load_scenarios(impl: str) -> dict[str, Prepare] | str:
    """The floor's or the engine's scenarios, or why the engine cannot even be imported."""
    if impl == "floor":
        from benchmarks._floor import SCENARIOS

        return SCENARIOS
    try:
        from benchmarks._engine import SCENARIOS as ENGINE_SCENARIOS
    except (ImportError, AttributeError) as exc:  # no blazen_trio, or one missing a name we use
        return f"blazen_trio not usable: {exc}"
    return ENGINE_SCENARIOS


def main() -> None:
    job: Job = json.loads(sys.argv[1])
    scenarios = load_scenarios(job["impl"])
    if isinstance(scenarios, str):
        emit({"unsupported": scenarios})
    else:
        emit(measure_job(scenarios[job["scenario"]], job, API[job["scenario"]]))


if __name__ == "__main__":
    main()
