"""Plain dict registries: the one place where names in a recipe become code.

Four registries connect a recipe to code without any ``if/elif`` on names:

* ``DOMAINS``    -- ``domain:`` field of a recipe -> :class:`mmssl.domain.Domain` instance
* ``OBJECTIVES`` -- ``objective.name`` -> :class:`ObjectiveSpec` (module class + config dataclass)
* ``DATASETS``   -- ``mmssl data prepare NAME`` -> :class:`DatasetBuilder`
* ``TASKS``      -- ``--task NAME`` of finetune/evaluate -> :class:`mmssl.tasks.TaskSpec`

Domains are discovered through the ``mmssl.domains`` entry-point group, so a third-party
package adds a modality by declaring an entry point; mmssl itself never imports ``domains``
by name (the dependency arrow points from ``domains`` to ``mmssl``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "mmssl.domains"


class Registry(Generic[T]):
    """A named ``dict`` with a decorator, duplicate warnings and helpful lookup errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2)
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none registered"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective module class and the dataclass that configures it."""

    cls: type
    config_cls: type
    description: str = ""


@dataclass(frozen=True)
class DatasetBuilder:
    """An offline dataset builder for ``mmssl data prepare NAME``.

    Attributes:
        name: registry key.
        description: one line for ``mmssl data list``.
        build: ``build(out_dir: Path) -> None`` writes the dataset into ``out_dir``
            (a ``datasets.Dataset.save_to_disk`` folder or plain files) and must be
            idempotent: ``prepare`` calls it only when ``out_dir`` is incomplete.
        domain: the domain whose recipes can read it (``text``, ``image``, ...).
    """

    name: str
    description: str
    build: Callable[[Path], None]
    domain: str


DOMAINS: Registry[Any] = Registry("domain")
OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
TASKS: Registry[Any] = Registry("task")

_plugins_loaded = False


def load_plugins() -> None:
    """Import every package registered under the ``mmssl.domains`` entry-point group once.

    Importing a domain package fills the registries above as a side effect.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import mmssl.objectives  # noqa: F401  (the core objectives register themselves)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
