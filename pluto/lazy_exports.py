"""PEP 562 lazy package exports: a package names its public objects without importing them.

So the settings object can load a package's config dataclass (e.g. `pluto.ssl.config`) without
importing torch through the package's `__init__`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """Return (`__getattr__`, `__all__`) for `package`; `exports` maps a public name to its submodule.

    A name may not equal its submodule's name: importing the submodule binds the module object to
    that attribute of the package, which would then shadow the function.
    """
    clashes = sorted(name for name, module in exports.items() if name == module)
    if clashes:
        raise ValueError(f"{package}: exported names equal to their submodule: {clashes}")

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__, sorted(exports)
