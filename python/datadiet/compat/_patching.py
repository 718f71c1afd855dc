"""Swapping attributes inside an imported package and putting them back: the machinery behind
every ``datadiet.compat.<peer>.patch()``."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Iterable


class Patch:
    """What a ``patch()`` replaced: ``(owner, name, original)`` triples. ``undo()`` restores them
    (also on leaving a ``with`` block) and, with ``package`` given, also puts the originals back
    in that package's modules imported while the patch was on (they bound ours by name);
    ``replaced`` lists ``"module.name"`` for each swap."""

    def __init__(self, swaps: list[tuple[Any, str, Any]], package: str = "") -> None:
        self._swaps, self._package = swaps, package

    @property
    def replaced(self) -> list[str]:
        return [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name, _ in self._swaps]

    def undo(self) -> None:
        originals = {id(getattr(owner, name)): original for owner, name, original in self._swaps}
        for owner, name, original in reversed(self._swaps):
            setattr(owner, name, original)
        if self._package:
            for module in _modules(self._package):
                for name, value in list(vars(module).items()):
                    if id(value) in originals:
                        setattr(module, name, originals[id(value)])
        self._swaps = []

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"Patch({', '.join(self.replaced) or 'nothing'})"


def import_peer(package: str, modules: Iterable[str], install_hint: str) -> None:
    """Imports ``package`` and those of ``modules`` (its submodules holding the functions to
    replace, or importing them by name) that exist in the installed version."""
    try:
        importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == package:
            raise ModuleNotFoundError(f"datadiet.compat: {package} is not importable ({install_hint})") from exc
        raise
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but one of its own imports is missing
                raise


def swap_functions(package: str, drop_ins: dict[str, Callable]) -> list[tuple[Any, str, Any]]:
    """In every loaded module of ``package``, replaces each attribute named in ``drop_ins`` that is
    a function defined inside the package (so names a module bound to something else stay)."""
    swaps = []
    for module in _modules(package):
        for name, replacement in drop_ins.items():
            current = module.__dict__.get(name)
            if callable(current) and _defined_in(current, package):
                swaps.append((module, name, current))
                setattr(module, name, replacement)
    return swaps


def _modules(package: str) -> list[Any]:
    """The loaded modules of ``package`` (itself included)."""
    return [m for name, m in sorted(sys.modules.items())
            if m is not None and (name == package or name.startswith(package + "."))]


def _defined_in(obj: Any, package: str) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    return mod == package or mod.startswith(package + ".")
