"""`python -m benchmarks.subworkflows`: what a sub-workflow call costs.

1,000 parent steps, each running a 3-step child run (`ctx.run_workflow`), against the same
4,000 steps flattened into one workflow (each parent step followed by the child's three),
measured in one process, alternating, best and median of the rounds. The difference per call
is the cost of a child run: opening it, its nursery and worker, its result.
"""

import argparse
import statistics
import time

import trio

import blazen_trio as bz


class Call(bz.Event):
    n: int


class Half(bz.Event):
    n: int


class Whole(bz.Event):
    n: int


@bz.step
async def child_start(ev: bz.StartEvent) -> Half:
    return Half(n=ev.data)


@bz.step
async def child_middle(ev: Half) -> Whole:
    return Whole(n=ev.n)


@bz.step
async def child_end(ev: Whole) -> bz.StopEvent:
    return bz.StopEvent(result=ev.n + 1)


CHILD = bz.Workflow("child", [child_start, child_middle, child_end])


def nested(calls: int) -> bz.Workflow:
    @bz.step
    async def begin(ev: bz.StartEvent) -> Call:
        return Call(n=0)

    @bz.step
    async def call(ctx: bz.Context, ev: Call) -> Call | bz.StopEvent:
        result = await ctx.run_workflow(CHILD, ev.n)
        return (
            bz.StopEvent(result=result.result) if result.result >= calls else Call(n=result.result)
        )

    return bz.Workflow("nested", [begin, call])


def flattened(calls: int) -> bz.Workflow:
    class Start(bz.Event):
        n: int

    @bz.step
    async def begin(ev: bz.StartEvent) -> Call:
        return Call(n=0)

    @bz.step
    async def call(ev: Call) -> Start:
        return Start(n=ev.n)

    @bz.step
    async def first(ev: Start) -> Half:
        return Half(n=ev.n)

    @bz.step
    async def middle(ev: Half) -> Whole:
        return Whole(n=ev.n)

    @bz.step
    async def last(ev: Whole) -> Call | bz.StopEvent:
        return bz.StopEvent(result=ev.n + 1) if ev.n + 1 >= calls else Call(n=ev.n + 1)

    return bz.Workflow("flattened", [begin, call, first, middle, last])


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    workflows = {"nested": nested(calls), "flattened": flattened(calls)}
    times: dict[str, list[float]] = {name: [] for name in workflows}
    for _ in range(rounds):
        for name, workflow in workflows.items():
            started = time.perf_counter()
            result = await workflow.run()
            times[name].append(time.perf_counter() - started)
            assert result.result == calls
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times = trio.run(measure, args.calls, args.rounds)
    for name, samples in times.items():
        print(
            f"{name:9}  best {min(samples) * 1e3:7.1f} ms  median "
            f"{statistics.median(samples) * 1e3:7.1f} ms  ({args.calls * 4:,} steps)"
        )
    per_call = statistics.median(times["nested"]) - statistics.median(times["flattened"])
    print(f"child run overhead per call (medians): {per_call / args.calls * 1e6:.1f} us")


if __name__ == "__main__":
    main()
