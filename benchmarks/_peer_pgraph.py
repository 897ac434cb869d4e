"""The chain and fan-out scenarios on pydantic-graph, run inside its peer venv.

Invoked as `<peer python> -m benchmarks._peer_pgraph '<job JSON>'` like `_peer_llama`. Written
the way its docs write graphs: the chain is a `BaseNode` that returns the next node or `End`;
the fan-out is a builder graph whose step returns a list that `.map()` spreads over parallel
tasks, gathered by a `join` with `reduce_list_append`. pydantic-graph has no concurrency cap on
a map: all 1,000 items run at once (blazen_trio and the floor are capped at `workers`).
"""

# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False, disable-error-code=misc
# (pydantic-graph is installed only in its peer venv, so here its classes and decorators are
# untyped `Any`.)

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Installed only in the peer venv, never in the main one.
from pydantic_graph import (  # type: ignore[import-not-found]
    BaseNode,
    End,
    GraphBuilder,
    GraphRunContext,
    StepContext,
    reduce_list_append,
)

from benchmarks._aio import answer, timed
from benchmarks._measure import Job, Metrics, Prepare


@dataclass
class Tick(BaseNode[None, None, int]):
    n: int
    total: int

    async def run(self, ctx: GraphRunContext[None, None]) -> Tick | End[int]:
        if self.n + 1 >= self.total:
            return End(self.n + 1)
        return Tick(self.n + 1, self.total)


def _chain_graph() -> Any:
    g = GraphBuilder(input_type=int, output_type=int)

    @g.step
    async def begin(ctx: StepContext[None, None, int]) -> Tick:
        return Tick(1, ctx.inputs)

    g.add(g.edge_from(g.start_node).to(begin), g.node(Tick))
    return g.build()


@dataclass(frozen=True)
class Done:
    i: int


def _fanout_graph() -> Any:
    g = GraphBuilder(input_type=int, output_type=int)

    @g.step
    async def begin(ctx: StepContext[None, None, int]) -> list[int]:
        return list(range(ctx.inputs))

    @g.step
    async def work(ctx: StepContext[None, None, int]) -> Done:
        return Done(ctx.inputs)

    @g.step
    async def finish(ctx: StepContext[None, None, list[Done]]) -> int:
        return len(ctx.inputs)

    gather = g.join(reduce_list_append, initial_factory=list[Done])
    g.add(
        g.edge_from(g.start_node).to(begin),
        g.edge_from(begin).map().to(work),
        g.edge_from(work).to(gather),
        g.edge_from(gather).to(finish),
        g.edge_from(finish).to(g.end_node),
    )
    return g.build()


def chain(job: Job) -> Callable[[], Metrics]:
    graph = _chain_graph()
    return timed(lambda: graph.run(inputs=job["n"]))


def fanout(job: Job) -> Callable[[], Metrics]:
    graph = _fanout_graph()
    return timed(lambda: graph.run(inputs=job["n"]))


SCENARIOS: dict[str, Prepare] = {"chain": chain, "fanout": fanout}


def main() -> None:
    answer(SCENARIOS, "pydantic-graph")


if __name__ == "__main__":
    main()
