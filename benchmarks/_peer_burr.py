"""The chain and fan-out scenarios on Apache Burr, run inside its peer venv.

Invoked as `<peer python> -m benchmarks._peer_burr '<job JSON>'` like `_peer_llama`. Written the
way Burr's docs write applications: async `@action`s over an immutable `State`, transitions with
conditions, `app.arun(halt_after=...)`. The chain is one action that loops on itself while
`n < total`; the fan-out is a `MapStates` action that runs one sub-application per item with
`asyncio.gather` (Burr has no concurrency cap there: all 1,000 run at once) and reduces them.
Burr's parallelism module imports its tracking models, which need pydantic: the venv has it.
"""

# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False
# (Burr is installed only in its peer venv, so here its classes and decorators are untyped.)

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

# Installed only in the peer venv, never in the main one.
from burr.core import ApplicationBuilder, State, action, expr  # type: ignore[import-not-found]
from burr.core.parallelism import MapStates  # type: ignore[import-not-found]

from benchmarks._aio import answer, timed
from benchmarks._measure import Job, Metrics, Prepare


@action(reads=["total"], writes=["n"])
async def begin(state: State) -> State:
    return state.update(n=1)


@action(reads=["n", "total"], writes=["n"])
async def tick(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["result"])
async def finish(state: State) -> State:
    return state.update(result=state["n"])


def _chain_app(total: int) -> Any:
    return (
        ApplicationBuilder()
        .with_actions(begin=begin, tick=tick, finish=finish)
        .with_transitions(
            ("begin", "tick", expr("n < total")),
            ("begin", "finish"),
            ("tick", "tick", expr("n < total")),
            ("tick", "finish"),
        )
        .with_state(total=total)
        .with_entrypoint("begin")
        .build()
    )


@action(reads=["i"], writes=["done"])
async def work(state: State) -> State:
    return state.update(done=state["i"])


class FanOut(MapStates):
    """One `work` sub-application per item, all at once; the reduce counts them."""

    def action(self, state: State, inputs: dict[str, Any]) -> Any:
        return work

    async def states(
        self, state: State, context: Any, inputs: dict[str, Any]
    ) -> AsyncGenerator[State, None]:
        for i in range(state["total"]):
            yield state.update(i=i)

    async def reduce(self, state: State, states: AsyncIterator[State]) -> State:
        done = [substate["done"] async for substate in states]
        return state.update(result=len(done))

    def is_async(self) -> bool:
        return True

    @property
    def reads(self) -> list[str]:
        return ["total"]

    @property
    def writes(self) -> list[str]:
        return ["result"]


def _fanout_app(total: int) -> Any:
    return (
        ApplicationBuilder()
        .with_actions(fan=FanOut())
        .with_transitions()
        .with_state(total=total)
        .with_entrypoint("fan")
        .build()
    )


async def _run(app: Any, last: str) -> object:
    _, _, state = await app.arun(halt_after=[last])
    return state["result"]


def chain(job: Job) -> Callable[[], Metrics]:
    return timed(lambda: _run(_chain_app(job["n"]), "finish"))


def fanout(job: Job) -> Callable[[], Metrics]:
    return timed(lambda: _run(_fanout_app(job["n"]), "fan"))


SCENARIOS: dict[str, Prepare] = {"chain": chain, "fanout": fanout}


def main() -> None:
    answer(SCENARIOS, "burr")


if __name__ == "__main__":
    main()
