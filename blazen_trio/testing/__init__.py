"""Tools to property-test your own workflows: pause/resume invariant checkers and strategies.

    from hypothesis import given
    from blazen_trio.testing import check_pause_resume, pause_plans

    @given(plan=pause_plans())
    def test_my_workflow_survives_pauses(plan):
        check_pause_resume(my_workflow, {"n": 3}, plan)

The checker runs your workflow once without interruption and once paused at the planned
virtual times (each pause in either mode, its snapshot round-tripped through bytes and resumed
in a fresh run, or resumed in place), and asserts both give the same result, the same final
state, the same multiset of committed step executions and (with `Workflow(history=True)`) the
same failed attempts. The workflow must be deterministic: the same input gives the same events
and state whatever the task interleaving (use order-insensitive fan-in, derive
`InputRequestEvent.request_id` from the input, and do not let concurrent steps
read-modify-write one state key: a cancelled attempt's write is left alone once another step
has overwritten it).

The strategies generate what a workflow's own property tests need: `state_values()` (values
`ctx.set` can hold that survive a snapshot), `events(MyEvent)` (instances of an event class,
fields drawn from their annotations) and `snapshots()` (valid `WorkflowSnapshot`s of every
shape). Needs hypothesis: `pip install -e '.[testing]'` in a checkout.
"""

# Imported first only to fail with the name of the extra that brings it (the strategies need it).
try:
    import hypothesis as _hypothesis  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "blazen_trio.testing needs hypothesis; install the extra: pip install -e '.[testing]' "
        "(in a checkout of blazen_trio)",
        name="hypothesis",
    ) from exc

from ._checker import (
    DEFAULT_TIME_LIMIT as DEFAULT_TIME_LIMIT,
    PausePoint as PausePoint,
    RunRecord as RunRecord,
    assert_same_run as assert_same_run,
    check_pause_resume as check_pause_resume,
    run_uninterrupted as run_uninterrupted,
    run_with_pauses as run_with_pauses,
)
from ._strategies import (
    SampleAttrs as SampleAttrs,
    SampleDataclass as SampleDataclass,
    SampleShade as SampleShade,
    SampleStruct as SampleStruct,
    events as events,
    pause_plans as pause_plans,
    snapshots as snapshots,
    state_values as state_values,
)
