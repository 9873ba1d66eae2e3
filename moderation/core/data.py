"""JSON in and out for the core's slotted dataclasses, through pydantic."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import TypeAdapter

__all__ = ["Data"]


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


class Data:
    """Mixin: ``to_dict`` / ``from_dict`` for a (slotted) dataclass."""

    __slots__ = ()

    def to_dict(self, mode: Literal["json", "python"] = "json") -> dict[str, Any]:
        out: dict[str, Any] = _adapter(type(self)).dump_python(self, mode=mode)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        value: Self = _adapter(cls).validate_python(data)
        return value
