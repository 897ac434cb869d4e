"""`@step`: turn an async function into a step, reading its events from its annotations."""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, final, overload

import attrs

from ._checks import is_count, is_optional_duration
from ._context import Context
from ._errors import ValidationError
from ._events import Event
from ._retry import RetryPolicy

StepFn = Callable[..., Awaitable[Any]]


@final
@attrs.frozen(eq=False)
class StepSpec:
    """A step as the workflow sees it: the function plus its routing and run options.

    Calling it calls the function, so a step can be unit-tested on its own.
    """

    name: str
    fn: StepFn
    accepts: tuple[type[Event], ...]
    emits: tuple[type[Event], ...]
    # False when the return annotation does not say which events come out (`-> Event`).
    emits_known: bool
    max_concurrency: int | None
    timeout: float | None
    retry: RetryPolicy | None
    # Where the context goes in the call: 0 = fn(ctx, ev), 1 = fn(ev, ctx), None = fn(ev).
    context_position: int | None
    # Event classes found fine to emit (declared, and no input request, whose every instance
    # is checked): the run looks an emitted event's class up here before any other check.
    _emits_checked: set[type[Event]] = attrs.field(factory=set, init=False, repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.fn(*args, **kwargs)

    def may_emit(self, event_type: type[Event]) -> bool:
        """Whether the step declares `event_type` or a base of it (anything, if unknown)."""
        return not self.emits_known or issubclass(event_type, self.emits)


@attrs.frozen
class _Options:
    name: str | None = None
    accepts: Iterable[type[Event]] | None = None
    emits: Iterable[type[Event]] | None = None
    max_concurrency: int | None = None
    timeout: float | None = None
    retry: RetryPolicy | None = None


def _is_event_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, Event)


def _union_members(annotation: object) -> tuple[object, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _event_types(annotation: object) -> tuple[type[Event], ...] | None:
    """The event classes an annotation names, or None if it names something else."""
    members = _union_members(annotation)
    if members and all(_is_event_class(m) and m is not Event for m in members):
        return typing.cast(tuple[type[Event], ...], members)
    return None


def _emitted_types(annotation: object) -> tuple[tuple[type[Event], ...], bool] | None:
    """(event classes, known) for a return annotation; None if it is not a step's return."""
    found: list[type[Event]] = []
    for member in _union_members(annotation):
        if member is None or member is type(None):
            continue
        if typing.get_origin(member) is list:
            (member,) = typing.get_args(member) or (Event,)
        for event_type in _union_members(member):
            if event_type is Event or event_type is Any:
                return tuple(found), False
            if not _is_event_class(event_type):
                return None
            found.append(typing.cast(type[Event], event_type))
    return tuple(found), True


def _resolve_hints(fn: StepFn, localns: Mapping[str, Any]) -> dict[str, Any]:
    """Annotations with strings (`from __future__ import annotations`) evaluated.

    The defining frame's locals are included, so events declared inside a function resolve.
    Names that cannot be resolved are left as strings for the caller to report.
    """
    try:
        return typing.get_type_hints(fn, localns=dict(localns))
    except Exception:  # fall back to one annotation at a time below
        pass
    resolved: dict[str, Any] = {}
    globalns = getattr(fn, "__globals__", {})
    for key, raw in inspect.get_annotations(fn).items():
        try:
            resolved[key] = eval(raw, globalns, dict(localns)) if isinstance(raw, str) else raw
        except Exception:  # reported as unresolvable by the caller
            resolved[key] = raw
    return resolved


def _is_context_annotation(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "Context"
    return annotation is Context


class _SignatureReader:
    """Collects every problem with a step function instead of stopping at the first."""

    def __init__(self, fn: object, options: _Options, localns: Mapping[str, Any]) -> None:
        self.fn = fn
        self.options = options
        self.localns = localns
        self.name: str = options.name or getattr(fn, "__name__", None) or repr(fn)
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(f"step {self.name!r}: {text}")

    def read(self) -> StepSpec | None:
        if not callable(self.fn):
            self.problem(f"is not a function: {self.fn!r}")
            return None
        if not inspect.iscoroutinefunction(self.fn):
            self.problem("must be an `async def` function")
            return None
        fn = typing.cast(StepFn, self.fn)
        self._check_options()
        hints = _resolve_hints(fn, self.localns)
        event_param, context_position = self._read_parameters(fn, hints)
        accepts: tuple[type[Event], ...] = ()
        if event_param is not None or self.options.accepts is not None:
            accepts = self._accepts(hints.get(event_param) if event_param else None)
        emits, emits_known = self._emits(hints)
        if self.problems:
            return None
        return StepSpec(
            name=self.name,
            fn=fn,
            accepts=accepts,
            emits=emits,
            emits_known=emits_known,
            max_concurrency=self.options.max_concurrency,
            timeout=self.options.timeout,
            retry=self.options.retry,
            context_position=context_position,
        )

    def _check_options(self) -> None:
        options = self.options
        if options.name is not None and (not isinstance(options.name, str) or not options.name):
            self.problem("name must be a non-empty str")
        limit = options.max_concurrency
        if limit is not None and not is_count(limit, 1):
            self.problem(f"max_concurrency must be an int >= 1 or None, got {limit!r}")
        timeout = options.timeout
        if not is_optional_duration(timeout):
            self.problem(f"timeout must be a number > 0 or None, got {timeout!r}")
        retry: object = options.retry  # typed, but callers may not be type-checked
        if retry is not None and not isinstance(retry, RetryPolicy):
            self.problem(f"retry must be a RetryPolicy or None, got {retry!r}")

    def _read_parameters(
        self, fn: StepFn, hints: Mapping[str, Any]
    ) -> tuple[str | None, int | None]:
        event_param: str | None = None
        context_position: int | None = None
        required = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        for position, param in enumerate(required):
            annotation = hints.get(param.name)
            if param.kind is param.KEYWORD_ONLY:
                self.problem(f"parameter {param.name!r} must not be keyword-only")
            elif _is_context_annotation(annotation):
                context_position = position
            elif event_param is None:
                event_param = param.name
            else:
                self.problem(
                    f"parameter {param.name!r} is neither the event nor a Context "
                    "(a step takes one event parameter and optionally a Context)"
                )
        if event_param is None:
            self.problem("has no event parameter (annotate one with an Event subclass)")
        elif len(required) > 2:
            self.problem("takes more than an event and a Context")
        return event_param, context_position

    def _accepts(self, annotation: object) -> tuple[type[Event], ...]:
        if self.options.accepts is not None:
            return self._explicit_types("accepts", self.options.accepts)
        types_ = _event_types(annotation)
        if types_ is None:
            self.problem(
                f"event parameter annotation {annotation!r} is not an Event subclass or a union "
                "of them (resolve it, or pass accepts=[...])"
            )
            return ()
        return types_

    def _emits(self, hints: Mapping[str, Any]) -> tuple[tuple[type[Event], ...], bool]:
        if self.options.emits is not None:
            return self._explicit_types("emits", self.options.emits), True
        if "return" not in hints:
            self.problem(
                "has no return annotation (annotate it, e.g. `-> StopEvent`, or pass emits=)"
            )
            return (), False
        emitted = _emitted_types(hints["return"])
        if emitted is None:
            self.problem(
                f"return annotation {hints['return']!r} is not an Event type, a union, a list of "
                "them, or None (resolve it, or pass emits=[...])"
            )
            return (), False
        return emitted

    def _explicit_types(self, what: str, values: Iterable[object]) -> tuple[type[Event], ...]:
        found = tuple(values)
        bad = [v for v in found if not _is_event_class(v) or v is Event]
        if bad:
            self.problem(f"{what}= must list Event subclasses, got {bad!r}")
        elif what == "accepts" and not found:
            self.problem("accepts= must name at least one event type")
        return typing.cast(tuple[type[Event], ...], found)


def read_step(
    fn: object, options: _Options, localns: Mapping[str, Any]
) -> tuple[StepSpec | None, list[str]]:
    """The step spec for `fn`, or None and every problem found with it."""
    reader = _SignatureReader(fn, options, localns)
    return reader.read(), reader.problems


def _caller_locals(depth: int) -> Mapping[str, Any]:
    frame = sys._getframe(depth + 1)
    return dict(frame.f_locals)


def _make_step(fn: object, options: _Options, localns: Mapping[str, Any]) -> StepSpec:
    spec, problems = read_step(fn, options, localns)
    if spec is None:
        raise ValidationError(problems)
    return spec


@overload
def step(fn: StepFn, /) -> StepSpec: ...


@overload
def step(
    *,
    name: str | None = None,
    accepts: Iterable[type[Event]] | None = None,
    emits: Iterable[type[Event]] | None = None,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[StepFn], StepSpec]: ...


def step(
    fn: StepFn | None = None,
    /,
    *,
    name: str | None = None,
    accepts: Iterable[type[Event]] | None = None,
    emits: Iterable[type[Event]] | None = None,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
) -> StepSpec | Callable[[StepFn], StepSpec]:
    """Declare a step, as `@step` or as `@step(name=..., max_concurrency=..., ...)`.

    Raises `ValidationError` at definition time listing every problem with the function.
    """
    options = _Options(name, accepts, emits, max_concurrency, timeout, retry)
    localns = _caller_locals(1)
    if fn is not None:
        return _make_step(fn, options, localns)
    return lambda f: _make_step(f, options, localns)
