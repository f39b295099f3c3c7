"""Imports put off until needed: package attributes imported on first use (PEP 562), so
importing a package stays cheap, and settings made once another package is imported."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from importlib.machinery import ModuleSpec
from importlib.util import find_spec
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # importlib.abc imports importlib.resources: not for every command
    from importlib.abc import Loader


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` for `exports` (name -> module that holds it)."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__


def when_imported(module: str, action: Callable[[ModuleType], None]) -> None:
    """Call `action(module)` once `module` is imported: now if it is, else right after.

    For a setting another package must have whenever it is used, without importing
    that package here (pydicom costs a quarter of a second to import).
    """
    if module in sys.modules:
        action(sys.modules[module])
        return
    sys.meta_path.insert(0, _AfterImport(module, action))


class _AfterImport:
    """A meta path finder that finds nothing itself: wraps the loader of one module so
    that `action` runs after it."""

    def __init__(self, module: str, action: Callable[[ModuleType], None]) -> None:
        self.module, self.action = module, action

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """The module's own spec, its loader wrapped (for `module` only; once)."""
        if name != self.module:
            return None
        sys.meta_path.remove(self)  # the finders after this one find the real spec
        spec = find_spec(name)
        if spec is not None and spec.loader is not None:
            # A loader by its methods (the import system's protocol), not importlib.abc's class.
            spec.loader = cast("Loader", _ThenAct(spec, spec.loader, self.action))
        return spec


class _ThenAct:
    """A module's loader, then `action` on the module it executed."""

    def __init__(
        self, spec: ModuleSpec, loader: Loader, action: Callable[[ModuleType], None]
    ) -> None:
        self.spec, self.loader, self.action = spec, loader, action

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        """What the real loader creates."""
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Execute the module with the real loader (which it keeps), then act on it."""
        # The real loader again, for whoever asks the module (inspect, resources).
        module.__loader__ = self.spec.loader = self.loader
        self.loader.exec_module(module)
        self.action(module)
