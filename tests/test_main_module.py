"""Snapshots taken by a script (`__main__`), resumed where the same classes live in a module."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import _script_workflow
import pytest
import trio
import trio.testing

import blazen_trio as bz
from blazen_trio._codec import decode_event, encode_value, known_event_types

SCRIPT = pathlib.Path(__file__).parent / "_script_workflow.py"


class Greet(bz.Event):
    name: str


class ScriptGreet(bz.Event):
    """What a `Greet` defined in a script is: its type id is `__main__.Greet`."""

    __module__ = "__main__"
    __qualname__ = "Greet"
    name: str


class ElsewhereGreet(bz.Event):
    """Another event class called `Greet`."""

    __module__ = "elsewhere"
    __qualname__ = "Greet"
    name: str


@dataclasses.dataclass
class ScriptStats:
    __module__ = "__main__"
    count: int


def test_the_stand_ins_have_script_ids() -> None:
    assert bz.event_type_id(ScriptGreet) == "__main__.Greet"
    assert bz.event_type_id(ElsewhereGreet) == "elsewhere.Greet"


def test_a_script_event_decodes_as_the_one_known_class_of_its_name() -> None:
    encoded = bz.EncodedEvent(type_id="__main__.Greet", payload={"name": "Ada"})
    back = decode_event(encoded, known_event_types([Greet]))
    assert type(back) is Greet
    assert back == Greet(name="Ada")


def test_a_script_event_stays_dynamic_when_its_name_is_not_unique() -> None:
    encoded = bz.EncodedEvent(type_id="__main__.Greet", payload={"name": "Ada"})
    back = decode_event(encoded, known_event_types([Greet, ElsewhereGreet]))
    assert back == bz.DynamicEvent(type_id="__main__.Greet", data={"name": "Ada"})


def test_a_script_event_known_by_its_own_id_keeps_its_class() -> None:
    encoded = bz.EncodedEvent(type_id="__main__.Greet", payload={"name": "Ada"})
    assert type(decode_event(encoded, known_event_types([Greet, ScriptGreet]))) is ScriptGreet


async def test_a_snapshot_refuses_a_script_event_that_another_process_could_not_retype() -> None:
    @bz.step
    async def entry(ev: bz.StartEvent) -> ScriptGreet:
        return ScriptGreet(name="Ada")

    @bz.step
    async def script_greet(ev: ScriptGreet) -> bz.StopEvent:
        await trio.sleep_forever()
        raise AssertionError("not reached")

    @bz.step
    async def module_greet(ev: Greet) -> bz.StopEvent:
        return bz.StopEvent()

    workflow = bz.Workflow("two-greets", [entry, script_greet, module_greet])
    async with workflow.start() as handler:
        await trio.testing.wait_all_tasks_blocked()
        await handler.pause(cancel_in_flight=True)
        with pytest.raises(bz.SnapshotError) as caught:
            await handler.snapshot()
        await handler.abort()
    message = str(caught.value)
    assert "'__main__.Greet'" in message
    assert "test_main_module.Greet" in message
    assert "type_id=" in message


def test_a_state_value_of_a_script_class_fails_at_snapshot_time() -> None:
    with pytest.raises(bz.SnapshotError) as caught:
        encode_value({"stats": [ScriptStats(count=1)]}, key="totals")
    message = str(caught.value)
    assert "key 'totals'" in message
    assert "__main__.ScriptStats" in message
    assert "define the class in an importable module" in message


async def test_a_script_snapshot_resumes_where_the_script_is_a_module(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "script.snapshot"
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, str(SCRIPT), str(path)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=str(tmp_path),  # nothing importable by accident from the parent's directory
        )
    assert done.returncode == 0, done.stderr.decode()

    # The script's state value of its own class was refused when the snapshot was taken.
    state_error = json.loads(done.stdout)["state_error"]
    assert "key 'stats'" in state_error
    assert "__main__.Stats" in state_error
    assert "define the class in an importable module" in state_error

    # Its events resume here, where they are `_script_workflow.Greet`.
    snapshot = bz.WorkflowSnapshot.from_bytes(await trio.Path(path).read_bytes())
    assert [p.event.type_id for p in snapshot.pending_events] == ["__main__.Greet"]
    result = await _script_workflow.WORKFLOW.run(resume=snapshot)
    assert result.result == "Hello, Ada!"
