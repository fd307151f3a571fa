"""Named registries (activations, architectures): one place that maps a name to its class.

Registering a name twice raises, and looking up an unknown name raises an `InputError` that
lists the known ones, so a typo in a config or a flag gets a one-line fix."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ctxsae_common.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map in which every name is registered once."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Register `item` under `name`; a name registered twice raises."""
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered (by {self._items[name]!r})")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@REGISTRY.decorator("name")` registers the decorated class under `name`."""
        return lambda item: self.register(name, item)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise InputError(f"unknown {self.what} {name!r}: choose one of {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._items)


#: activation kind -> activation config dataclass (see `ctxsae_core.config`)
ACTIVATION_CONFIGS: Registry[type] = Registry("activation")
#: activation kind -> activation module class (see `ctxsae_core.activations`)
ACTIVATION_MODULES: Registry[type] = Registry("activation module")
#: architecture name -> SAE model class (see `ctxsae_core.sae`, `ctxsae_core.contextual`)
ARCHITECTURES: Registry[type] = Registry("architecture")
#: carry name -> carry module class (see `ctxsae_core.carry`)
CARRIES: Registry[type] = Registry("carry")
