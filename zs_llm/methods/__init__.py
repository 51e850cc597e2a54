"""Test-time methods, one small class each, in the `METHODS` registry.

A method is one file: every module of this package registers its methods when the package is
imported (found with `pkgutil`, no import list). Methods outside the package come from an entry
point in the group `zs_llm.methods` (loaded by `import zs_llm`) or from `load_methods(FILE_OR_MODULE)`
(`python -m eval run --method_module ...`).
"""

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from .base import ENTRY_POINT_GROUP, METHODS, LossBatch, Method, MethodConfig, MethodRegistrationError

__all__ = ["ENTRY_POINT_GROUP", "METHODS", "LossBatch", "Method", "MethodConfig", "MethodRegistrationError",
           "load_entry_points", "load_methods"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
del _info

_LOADED: dict[str, list[str]] = {}  # source (a resolved file, or a module name) -> the methods it registered


def load_methods(source: str) -> list[str]:
    """Import a module of methods from outside the package: a `.py` file, or an importable module
    name (`mypkg.methods`). Its `@METHODS.register(...)` lines register them. Returns the names it
    registered; a source loaded before is not loaded again. A file that does not exist, fails to
    import or registers no method is a one-line ValueError."""
    path = Path(source).expanduser()
    is_file = source.endswith(".py") or path.is_file()
    key = str(path.resolve()) if is_file else source
    if key in _LOADED:
        return _LOADED[key]
    if is_file and not path.is_file():
        raise ValueError(f"method module {source}: no such file; give a .py file or an importable module name")
    before = set(METHODS)
    name = f"zs_llm_user_methods.{path.stem}_{abs(hash(key)):x}" if is_file else source
    try:
        _import(source, path, name, is_file)
    except ModuleNotFoundError as e:
        if not is_file and e.name and (source + ".").startswith(e.name + "."):  # the module itself, not an import in it
            raise ValueError(f"method module {source}: no such module; give a .py file or an importable module "
                             "name") from None
        raise ValueError(f"method module {source} failed to import ({type(e).__name__}: {e}); fix it") from e
    except (TypeError, ValueError) as e:  # a registration refused: its message says why
        raise ValueError(f"method module {source}: {' '.join(str(e).split())}") from e
    except Exception as e:
        raise ValueError(f"method module {source} failed to import ({type(e).__name__}: {e}); fix it") from e
    added = [m for m in METHODS if m not in before]
    if not added and not is_file:  # a module imported before registered its methods then
        added = [m for m, cls in METHODS.items() if getattr(cls, "__module__", None) == source]
    if not added:
        raise ValueError(f"method module {source} registered no method; decorate a Method subclass with "
                         '@METHODS.register("name") (from zs_llm.methods import METHODS)')
    _LOADED[key] = added
    return added


def _import(source: str, path: Path, name: str, is_file: bool) -> None:
    if not is_file:
        importlib.import_module(source)
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)  # a file that failed leaves nothing behind: fixed, it loads again
        raise


def load_entry_points() -> list[str]:
    """Import every module installed under the entry point group `zs_llm.methods`. Returns the
    names they registered. One that fails to load is an ImportError naming it and its package."""
    from importlib.metadata import entry_points

    before = set(METHODS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "its package"
            raise ImportError(f"method entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}, from {dist}) "
                              f"failed to load ({type(e).__name__}: {e}); fix or uninstall {dist}") from e
    return [m for m in METHODS if m not in before]
