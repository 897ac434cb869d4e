"""Property: any DAG-shaped workflow computes what a plain-Python walk of the same graph does.

Each node is a step with its own event type. A node with no parents takes the start value; a
node with parents fans in their values with `collect_events`. A node's value is the sum of its
inputs plus its weight; a sink collects every leaf and ends the run with their values.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import trio
import trio.lowlevel
from hypothesis import given, settings, strategies as st

import blazen_trio as bz


class NodeValue(bz.Event):
    value: int


@functools.cache
def node_event(index: int) -> type[NodeValue]:
    """The event type node `index` emits; one class per index, reused across examples."""

    class Out(NodeValue, type_id=f"tests.dag.node{index}"):
        pass

    return Out


@dataclasses.dataclass(frozen=True)
class Node:
    parents: tuple[int, ...]  # indices of earlier nodes; () = fed by the start event
    weight: int
    limit: int | None  # the step's max_concurrency
    checkpoints: int  # how often the step yields, to shuffle the interleaving


@dataclasses.dataclass(frozen=True)
class Dag:
    nodes: tuple[Node, ...]
    sink_limit: int | None

    @property
    def leaves(self) -> tuple[int, ...]:
        with_children = {p for node in self.nodes for p in node.parents}
        return tuple(i for i in range(len(self.nodes)) if i not in with_children)


limits = st.none() | st.integers(min_value=1, max_value=3)


@st.composite
def dags(draw: st.DrawFn) -> Dag:
    nodes: list[Node] = []
    previous_layer: list[int] = []
    for layer in range(draw(st.integers(min_value=1, max_value=4))):
        earlier = list(range(len(nodes)))
        this_layer: list[int] = []
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            parents: tuple[int, ...] = ()
            if layer:
                # One parent from the layer right above keeps the layers; more from anywhere.
                first = draw(st.sampled_from(previous_layer))
                more = draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True))
                parents = tuple(sorted({first, *more}))
            this_layer.append(len(nodes))
            nodes.append(
                Node(
                    parents=parents,
                    weight=draw(st.integers(min_value=-50, max_value=50)),
                    limit=draw(limits),
                    checkpoints=draw(st.integers(min_value=0, max_value=2)),
                )
            )
        previous_layer = this_layer
    return Dag(tuple(nodes), draw(limits))


def reference(dag: Dag, start: int) -> tuple[int, ...]:
    values: list[int] = []
    for node in dag.nodes:
        inputs = [values[p] for p in node.parents] if node.parents else [start]
        values.append(sum(inputs) + node.weight)
    return tuple(values[leaf] for leaf in dag.leaves)


def value_of(event: bz.Event) -> int:
    assert isinstance(event, NodeValue)
    return event.value


def node_step(index: int, node: Node) -> bz.StepSpec:
    out = node_event(index)
    inputs: Sequence[type[bz.Event]] = [node_event(p) for p in node.parents]

    @bz.step(
        name=f"node{index}",
        accepts=inputs or [bz.StartEvent],
        emits=[out],
        max_concurrency=node.limit,
    )
    async def run_node(ctx: bz.Context, ev: bz.Event) -> bz.Event | None:
        for _ in range(node.checkpoints):
            await trio.lowlevel.checkpoint()
        if isinstance(ev, bz.StartEvent):
            return out(value=ev.data + node.weight)
        got = ctx.collect_events(ev, inputs)
        if got is None:
            return None
        return out(value=sum(value_of(e) for e in got) + node.weight)

    return run_node


def sink_step(dag: Dag) -> bz.StepSpec:
    leaves = [node_event(leaf) for leaf in dag.leaves]

    @bz.step(name="sink", accepts=leaves, emits=[bz.StopEvent], max_concurrency=dag.sink_limit)
    async def sink(ctx: bz.Context, ev: bz.Event) -> bz.Event | None:
        got = ctx.collect_events(ev, leaves)
        if got is None:
            return None
        return bz.StopEvent(result=tuple(value_of(e) for e in got))

    return sink


def build(dag: Dag) -> bz.Workflow:
    steps = [node_step(i, node) for i, node in enumerate(dag.nodes)]
    return bz.Workflow("dag", [*steps, sink_step(dag)])


@settings(max_examples=150)  # about 10 ms each
@given(dag=dags(), start=st.integers(min_value=-1000, max_value=1000))
async def test_a_dag_workflow_matches_the_reference(dag: Dag, start: int) -> None:
    wf = build(dag)
    results: dict[int, object] = {}

    async def run_one(value: int) -> None:
        results[value] = (await wf.run(value)).result

    # Two runs at once: their collect buffers and limiters must not mix.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_one, start)
        nursery.start_soon(run_one, start + 1)
    assert results == {start: reference(dag, start), start + 1: reference(dag, start + 1)}


def test_reference_of_a_diamond() -> None:
    # start -> 0 -> (1, 2) -> 3; the walk itself is checked once by hand.
    dag = Dag(
        (
            Node((), 1, None, 0),
            Node((0,), 10, None, 0),
            Node((0,), 100, None, 0),
            Node((1, 2), 1000, None, 0),
        ),
        None,
    )
    assert dag.leaves == (3,)
    assert reference(dag, 5) == ((5 + 1 + 10) + (5 + 1 + 100) + 1000,)
