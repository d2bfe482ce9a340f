"""Registry: the name → class table through which methods plug in (condensers, inverse-Hessian solvers).

One :class:`Registry` per kind of plug-in, in the manner of Optuna's samplers or optax's
transforms: a class joins with the ``@REGISTRY.register("name")`` decorator (which also sets its
``name`` attribute), and ``REGISTRY.make("name", **options)`` builds one, with a ConfigError that
lists the known names for an unknown one.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from .errors import ConfigError

T = TypeVar("T", bound=type)


class Registry(dict[str, type]):
    """A dict from names to the classes of one kind of plug-in; ``kind`` names it in messages."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator adding a class under ``name``; ValueError if the name is taken."""

        def add(cls: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            cls.name = name
            self[name] = cls
            return cls

        return add

    def make(self, name: str, **options):
        """An instance of the class registered under ``name``, built with ``options``."""
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name](**options)


def check_known_options(kind: str, name: str, options: dict, defaults: dict) -> None:
    """ConfigError naming the options that ``defaults`` (a plug-in's option table) does not know."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"unknown option(s) {unknown} for {kind} {name!r} (known: {known})")
