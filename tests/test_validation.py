"""`Workflow` construction: one `ValidationError` listing every problem; the graph; Mermaid."""

from __future__ import annotations

from typing import Any

import pytest

import blazen_trio as bz


class Parsed(bz.Event, type_id="val.Parsed"):
    text: str = ""


class Orphan(bz.Event, type_id="val.Orphan"):
    pass


class Special(Parsed, type_id="val.Special"):
    pass


class Quoted(bz.Event, type_id='val."Quoted"<x>'):
    pass


@bz.step
async def parse(ev: bz.StartEvent) -> Parsed:
    return Parsed(text=str(ev.data))


@bz.step
async def finish(ev: Parsed) -> bz.StopEvent:
    return bz.StopEvent(result=ev.text)


def problems_of(*args: Any, **kwargs: Any) -> tuple[str, ...]:
    with pytest.raises(bz.ValidationError) as caught:
        bz.Workflow(*args, **kwargs)
    return caught.value.problems


def test_a_valid_workflow_keeps_its_steps_in_order() -> None:
    wf = bz.Workflow("ok", [parse, finish])
    assert wf.name == "ok"
    assert [s.name for s in wf.steps] == ["parse", "finish"]


def test_no_step_accepting_a_start_type() -> None:
    @bz.step
    async def again(ev: Parsed) -> Parsed | bz.StopEvent:
        return bz.StopEvent()

    (problem,) = problems_of("wf", [again])
    assert problem == (
        "workflow 'wf': no step accepts a start event (StartEvent, a subclass of it, "
        "or a type that no step emits)"
    )


def test_a_type_no_step_emits_is_a_start_type() -> None:
    class Begin(bz.Event):
        x: int

    @bz.step
    async def entry(ev: Begin) -> bz.StopEvent:
        return bz.StopEvent(result=ev.x * 2)

    assert bz.Workflow("begin", [entry]).steps == (entry,)


def test_a_step_accepting_a_start_event_subclass_is_an_entry() -> None:
    class CustomStart(bz.StartEvent):
        pass

    @bz.step
    async def entry(ev: CustomStart) -> bz.StopEvent:
        return bz.StopEvent()

    assert bz.Workflow("custom", [entry]).steps == (entry,)


def test_no_step_emitting_stop_event() -> None:
    @bz.step
    async def loop(ev: bz.StartEvent | Parsed) -> Parsed:
        return Parsed()

    (problem,) = problems_of("wf", [loop])
    assert "no step can emit StopEvent" in problem


def test_a_step_of_unknown_emits_may_end_the_run() -> None:
    @bz.step
    async def anything(ev: bz.StartEvent) -> bz.Event:
        return bz.StopEvent()

    assert bz.Workflow("open", [anything]).steps == (anything,)


def test_an_emitted_type_that_no_step_accepts() -> None:
    @bz.step
    async def stray(ev: bz.StartEvent) -> Orphan | bz.StopEvent:
        return bz.StopEvent()

    (problem,) = problems_of("wf", [stray])
    assert problem == "workflow 'wf': step 'stray' emits Orphan, which no step accepts"


def test_an_emitted_subclass_of_an_accepted_type_is_fine() -> None:
    @bz.step
    async def special(ev: bz.StartEvent) -> Special:
        return Special()

    assert len(bz.Workflow("sub", [special, finish]).steps) == 2


@pytest.mark.parametrize(
    "exempt",
    [
        bz.UsageEvent,
        bz.StepStarted,
        bz.StepCompleted,
        bz.StepErrored,
        bz.StreamLagged,
    ],
)
def test_stream_and_request_events_need_no_acceptor(exempt: type[bz.Event]) -> None:
    @bz.step(emits=[exempt, bz.StopEvent])
    async def emitter(ev: bz.StartEvent) -> Any:
        return bz.StopEvent()

    assert bz.Workflow("exempt", [emitter]).steps == (emitter,)


def test_an_input_request_needs_a_step_accepting_the_response() -> None:
    @bz.step(emits=[bz.InputRequestEvent, bz.StopEvent])
    async def asker(ev: bz.StartEvent) -> Any:
        return bz.StopEvent()

    (problem,) = problems_of("hitl", [asker])
    assert problem == (
        "workflow 'hitl': a step emits InputRequestEvent but no step accepts InputResponseEvent"
    )


class Loop(bz.Event, type_id="val.Loop"):
    pass


class Ping(bz.Event, type_id="val.Ping"):
    pass


class Pong(bz.Event, type_id="val.Pong"):
    pass


@bz.step
async def entry(ev: bz.StartEvent) -> Ping | bz.StopEvent:
    return bz.StopEvent()


def test_a_step_no_start_type_reaches_is_an_island() -> None:
    @bz.step
    async def island(ev: Loop) -> Loop | bz.StopEvent:
        return bz.StopEvent()

    @bz.step
    async def ping(ev: Ping) -> None:
        return None

    (problem,) = problems_of("wf", [entry, ping, island])
    assert problem == "workflow 'wf': no start event can reach step 'island'"


def test_a_cycle_that_cannot_reach_stop_event() -> None:
    @bz.step
    async def ping(ev: Ping) -> Pong:
        return Pong()

    @bz.step
    async def pong(ev: Pong) -> Ping:
        return Ping()

    (problem,) = problems_of("wf", [entry, ping, pong])
    assert problem == (
        "workflow 'wf': no StopEvent can be reached from the cycle of steps 'ping', 'pong'"
    )


def test_a_step_looping_on_itself_that_cannot_reach_stop_event() -> None:
    @bz.step
    async def spin(ev: Ping) -> Ping | Pong:
        return Ping()

    @bz.step
    async def dead_end(ev: Pong) -> None:
        return None

    (problem,) = problems_of("wf", [entry, spin, dead_end])
    assert problem == "workflow 'wf': no StopEvent can be reached from the cycle of steps 'spin'"


@pytest.mark.parametrize("exit_returns", [bz.StopEvent, bz.Event])
def test_a_cycle_with_a_way_out_is_fine(exit_returns: type[bz.Event]) -> None:
    @bz.step
    async def ping(ev: Ping) -> Pong:
        return Pong()

    @bz.step(emits=None if exit_returns is bz.Event else [Ping, bz.StopEvent])
    async def pong(ev: Pong) -> bz.Event:  # unknown emits may reach StopEvent
        return bz.StopEvent()

    assert len(bz.Workflow("ok", [entry, ping, pong]).steps) == 3


def test_a_cycle_through_an_input_request_can_reach_stop_event() -> None:
    @bz.step
    async def ask(ev: Ping) -> bz.InputRequestEvent:
        return bz.InputRequestEvent(prompt="again?")

    @bz.step
    async def answer(ev: bz.InputResponseEvent) -> Ping | bz.StopEvent:
        return bz.StopEvent()

    assert len(bz.Workflow("hitl", [entry, ask, answer]).steps) == 3


def test_islands_and_cycles_are_listed_with_the_other_problems() -> None:
    @bz.step
    async def island(ev: Loop) -> Loop | Orphan:
        return Loop()

    @bz.step
    async def ping(ev: Ping) -> Pong:
        return Pong()

    @bz.step
    async def pong(ev: Pong) -> Ping:
        return Ping()

    assert problems_of("wf", [entry, island, ping, pong]) == (
        "workflow 'wf': step 'island' emits Orphan, which no step accepts",
        "workflow 'wf': no start event can reach step 'island'",
        "workflow 'wf': no StopEvent can be reached from the cycle of steps 'island'",
        "workflow 'wf': no StopEvent can be reached from the cycle of steps 'ping', 'pong'",
    )


def test_duplicate_step_names() -> None:
    @bz.step(name="parse")
    async def other(ev: Parsed) -> bz.StopEvent:
        return bz.StopEvent()

    (problem,) = problems_of("wf", [parse, other])
    assert problem == "workflow 'wf': duplicate step name 'parse'"


def test_a_step_accepting_stop_event() -> None:
    @bz.step
    async def after(ev: bz.StopEvent) -> None:
        return None

    problems = problems_of("wf", [parse, finish, after])
    assert problems == (
        "workflow 'wf': step 'after' accepts StopEvent, which ends the run and is never routed",
    )


def test_a_step_accepting_input_request_event() -> None:
    @bz.step(emits=[bz.InputRequestEvent, bz.StopEvent])
    async def asker(ev: bz.StartEvent | bz.InputResponseEvent) -> Any:
        return bz.StopEvent()

    @bz.step
    async def eavesdrop(ev: bz.InputRequestEvent) -> None:
        return None

    problems = problems_of("wf", [asker, eavesdrop])
    assert problems == (
        "workflow 'wf': step 'eavesdrop' accepts InputRequestEvent, which goes to the caller "
        "or the input_handler and is never routed to a step",
    )


def test_a_plain_async_function_is_not_a_step() -> None:
    async def plain(ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent()

    (problem,) = problems_of("plain", [plain])
    assert problem == "workflow 'plain': 'plain' is not a @step: decorate it with @bz.step"


def test_anything_else_passed_as_a_step_is_reported() -> None:
    problems = problems_of("wf", [parse, finish, 42])
    assert problems == ("workflow 'wf': 42 is not a @step: decorate it with @bz.step",)


def test_every_graph_problem_is_listed_at_once() -> None:
    @bz.step
    async def stray(ev: Parsed) -> Orphan:
        return Orphan()

    @bz.step(name="stray")
    async def twin(ev: bz.StopEvent) -> None:
        return None

    @bz.step
    async def again(ev: Parsed) -> Parsed:
        return ev

    problems = problems_of("wf", [stray, twin, again])
    assert problems == (
        "workflow 'wf': duplicate step name 'stray'",
        "workflow 'wf': no step accepts a start event (StartEvent, a subclass of it, or a type "
        "that no step emits)",
        "workflow 'wf': no step can emit StopEvent, so no run can finish",
        "workflow 'wf': step 'stray' accepts StopEvent, which ends the run and is never routed",
        "workflow 'wf': step 'stray' emits Orphan, which no step accepts",
    )


def test_option_and_step_problems_are_listed_together() -> None:
    def not_a_step(ev: bz.StartEvent) -> bz.StopEvent:
        return bz.StopEvent()

    problems = problems_of("", [not_a_step], timeout=0, retry="often")
    joined = "\n".join(problems)
    assert len(problems) == 4
    assert "workflow name must be a non-empty str" in joined
    assert "timeout must be a number > 0" in joined
    assert "retry must be a RetryPolicy" in joined
    assert "'not_a_step' is not a @step" in joined


def test_a_workflow_needs_a_step() -> None:
    (problem,) = problems_of("empty", [])
    assert "needs at least one step" in problem


def test_validate_false_skips_the_graph_checks() -> None:
    @bz.step
    async def stray(ev: Parsed) -> Orphan:
        return Orphan()

    wf = bz.Workflow("loose", [stray], validate=False)
    assert [s.name for s in wf.steps] == ["stray"]


def test_validate_false_still_refuses_what_is_not_a_step() -> None:
    async def undecorated(ev: Parsed) -> Orphan:
        return Orphan()

    (problem,) = problems_of("loose", [undecorated], validate=False)
    assert problem == "workflow 'loose': 'undecorated' is not a @step: decorate it with @bz.step"


# -- graph and Mermaid ---------------------------------------------------------------------


def test_graph_lists_steps_events_and_edges() -> None:
    graph = bz.Workflow("g", [parse, finish]).graph()
    assert graph.steps == ("parse", "finish")
    assert graph.events == ("blazen.StartEvent", "val.Parsed", "blazen.StopEvent")
    assert graph.edges == (
        bz.GraphEdge("blazen.StartEvent", "parse", "accepts"),
        bz.GraphEdge("parse", "val.Parsed", "emits"),
        bz.GraphEdge("val.Parsed", "finish", "accepts"),
        bz.GraphEdge("finish", "blazen.StopEvent", "emits"),
    )


def test_graph_shows_every_declared_emit() -> None:
    @bz.step
    async def split(ev: bz.StartEvent) -> list[Parsed | Loop] | None:
        return None

    @bz.step(emits=[Ping, bz.StopEvent])
    async def sender(ctx: bz.Context, ev: Parsed) -> None:
        ctx.send_event(Ping())

    @bz.step
    async def either(ev: Loop | Ping) -> bz.StopEvent | None:
        return None

    emits = {
        (edge.source, edge.target)
        for edge in bz.Workflow("g", [split, sender, either]).graph().edges
        if edge.kind == "emits"
    }
    assert emits == {
        ("split", "val.Parsed"),
        ("split", "val.Loop"),
        ("sender", "val.Ping"),
        ("sender", "blazen.StopEvent"),
        ("either", "blazen.StopEvent"),
    }


def test_mermaid_renders_the_graph() -> None:
    text = bz.Workflow("g", [parse, finish]).to_mermaid()
    assert text == (
        "flowchart TD\n"
        '    e0(["blazen.StartEvent"])\n'
        '    e1(["val.Parsed"])\n'
        '    e2(["blazen.StopEvent"])\n'
        '    s0["parse"]\n'
        '    s1["finish"]\n'
        "    e0 --> s0\n"
        "    s0 --> e1\n"
        "    e1 --> s1\n"
        "    s1 --> e2\n"
    )


def test_mermaid_labels_escape_quotes_and_angle_brackets() -> None:
    @bz.step
    async def emit_quoted(ev: bz.StartEvent) -> Quoted:
        return Quoted()

    @bz.step
    async def end(ev: Quoted) -> bz.StopEvent:
        return bz.StopEvent()

    text = bz.Workflow("q", [emit_quoted, end]).to_mermaid()
    assert '(["val._Quoted__x_"])' in text
    assert "<" not in text
    assert '"Quoted"' not in text
