"""Plain dict registries: the one place where names in a recipe become code.

Three registries here connect a recipe to code without any ``if/elif`` on names (the fourth,
``OBJECTIVES``, is a plain dict in :mod:`mmssl.objectives`, next to the objectives it lists):

* ``DOMAINS``    -- ``domain:`` field of a recipe -> :class:`mmssl.domain.Domain` instance
* ``DATASETS``   -- ``mmssl data prepare NAME`` -> :class:`DatasetBuilder`
* ``TASKS``      -- ``--task NAME`` of finetune/evaluate -> :class:`TaskSpec` (a loader and its domain)

Domains are discovered through the ``mmssl.domains`` entry-point group, so a third-party
package adds a modality by declaring an entry point; mmssl itself never imports ``domains``
by name (the dependency arrow points from ``domains`` to ``mmssl``). Datasets have a group of
their own, ``mmssl.datasets``, whose modules only describe builders (the code is imported when a
builder runs), so that ``mmssl data list`` answers without importing torch or any domain.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from mmssl.config import short_repr

T = TypeVar("T")

ENTRY_POINT_GROUP = "mmssl.domains"
DATASETS_GROUP = "mmssl.datasets"


class Registry(Generic[T]):
    """A named ``dict`` with a decorator, duplicate warnings and helpful lookup errors."""

    def __init__(self, kind: str, group: str = ENTRY_POINT_GROUP) -> None:
        self.kind = kind
        self.group = group  # the entry-point group whose modules fill this registry
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
        load_plugins(self.group)
        if name not in self._items:  # a domain may also register entries when it is imported
            load_plugins(ENTRY_POINT_GROUP)
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none registered"
            raise KeyError(f"unknown {self.kind} {short_repr(name)}; known: {known}") from None

    def names(self) -> list[str]:
        load_plugins(self.group)
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        load_plugins(self.group)
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class DatasetBuilder:
    """An offline dataset builder for ``mmssl data prepare NAME``.

    Attributes:
        name: registry key.
        description: one line for ``mmssl data list``.
        build: ``build(out_dir: Path) -> None`` writes the dataset into ``out_dir``
            (a ``datasets.Dataset.save_to_disk`` folder or plain files) and must be
            idempotent: ``prepare`` calls it only when ``out_dir`` is incomplete. Either the
            function or its ``"module:function"`` name, imported only when the builder runs.
        domain: the domain whose recipes can read it (``text``, ``image``, ...).
        embedded: a copy ships inside the package (used without preparing it).
    """

    name: str
    description: str
    build: Callable[[Path], None] | str
    domain: str
    embedded: bool = False

    def resolve(self) -> Callable[[Path], None]:
        """The build function, its module imported first if it is given by name."""
        if not isinstance(self.build, str):
            return self.build
        module, _, function = self.build.partition(":")
        return getattr(importlib.import_module(module), function)

    def run(self, out_dir: Path) -> None:
        """Build the dataset into ``out_dir``."""
        self.resolve()(out_dir)


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task for ``--task NAME``: its loader, and the domain whose exports it fits.

    Attributes:
        load: ``load() -> rows`` in the domain's own format (a ``datasets.Dataset`` for text,
            train/test arrays for images, ...); the domain's ``task_data`` reads them.
        domain: the domain that registers the task (``text``, ``image``, ...); ``mmssl finetune``
            refuses the task for an export of another domain, and names the domain's tasks.
    """

    load: Callable[[], Any]
    domain: str

    def __call__(self) -> Any:
        """The task's rows (``TASKS.get(name)()`` reads as loading the task)."""
        return self.load()


DOMAINS: Registry[Any] = Registry("domain")
DATASETS: Registry[DatasetBuilder] = Registry("dataset", DATASETS_GROUP)
TASKS: Registry[TaskSpec] = Registry("task")


def registered_tasks(domain: str) -> tuple[str, ...]:
    """The names of the tasks registered for ``domain`` (:attr:`TaskSpec.domain`), sorted."""
    return tuple(name for name in TASKS.names() if TASKS.get(name).domain == domain)


_loaded_groups: set[str] = set()


def load_plugins(group: str = ENTRY_POINT_GROUP) -> None:
    """Import every module registered under the entry-point ``group`` once.

    Importing a domain (``mmssl.domains``) or a dataset catalog (``mmssl.datasets``) fills the
    registries above as a side effect.
    """
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for ep in entry_points(group=group):
        ep.load()
