"""Export hygiene borrowed from trio: handles without public constructors, public names."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass of handles the engine makes for users (`Foo(...)` raises TypeError).

    The engine builds them with `Foo._create(...)`.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "the engine hands it out"
        )

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


def fixup_module_metadata(module_name: str, namespace: dict[str, Any]) -> None:
    """Make public names say `blazen_trio.X`, not `blazen_trio._module.X`.

    Tracebacks, reprs and pickles then name what users import; pickles keep loading when a
    private module is renamed.
    """
    seen: set[int] = set()
    private_prefix = module_name + "._"

    def fix_one(qualname: str, name: str, obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not module.startswith(private_prefix):
            return
        obj.__module__ = module_name
        if getattr(obj, "__name__", None) == name:
            setattr(obj, "__qualname__", qualname)  # noqa: B010  # `object` declares none
        if isinstance(obj, type):
            for attr_name, attr_value in obj.__dict__.items():
                fix_one(f"{qualname}.{attr_name}", attr_name, attr_value)

    for name, obj in namespace.items():
        if not name.startswith("_"):
            fix_one(name, name, obj)
