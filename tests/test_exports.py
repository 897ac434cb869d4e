"""The public surface: every name is exported once, from a private module, and documented."""

from __future__ import annotations

import inspect

import blazen_trio


def public_names() -> list[str]:
    return [name for name in dir(blazen_trio) if not name.startswith("_")]


def test_every_public_name_comes_from_a_private_module() -> None:
    for name in public_names():
        obj = getattr(blazen_trio, name)
        module = getattr(obj, "__module__", "")
        if inspect.ismodule(obj):
            continue
        assert module.startswith("blazen_trio._") or module == "blazen_trio.testing", name


def test_every_public_class_and_function_is_documented() -> None:
    for name in public_names():
        obj = getattr(blazen_trio, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_private_modules_are_not_reexported_under_public_names() -> None:
    modules = [name for name in public_names() if inspect.ismodule(getattr(blazen_trio, name))]
    assert set(modules) <= {"testing", "cli"}
