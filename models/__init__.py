"""NF models: the API (models.api), the bundled NFs by command-line name, and `lookup` of a model
reference: a bundled name, `path/to/file.py:Class` or `package.module:Class`."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys

from .api import NF, ParamError
from .csfq import CsfqCore, CsfqEdge
from .firewall import Firewall
from .lb import Lb
from .lb_hash import LbHash
from .monitor import Monitor
from .nat import Nat
from .ratelimit import RateLimit

NFS: dict[str, type[NF]] = {cls.name: cls for cls in (Nat, Firewall, Lb, LbHash, RateLimit, Monitor, CsfqEdge,
                                                      CsfqCore)}


class UnknownModel(KeyError):
    """A model reference that does not name a loadable NF (one line, naming the fix)."""

    def __str__(self) -> str:
        return self.args[0]


def lookup(ref: str) -> type[NF]:
    """The NF a reference names: a bundled name (`nat`), a file (`path/to/mynf.py:MyNF`) or a
    module (`pkg.module:MyNF`), optionally with parameters (`nat[ports=2,base=1000]`, as
    `model_ref` writes configured models), or a linear chain of those (`firewall>nat>lb`, one
    composite NF). UnknownModel if it names none."""
    ref = ref.strip()
    if ">" in ref.replace("<locals>", ""):  # a linear chain, e.g. firewall>nat>lb (models/chain.py), as one NF
        from .chain import Chain
        composite = Chain.parse(ref, lookup).as_nf()
        composite.model_reference = ref  # reproduction snippets load the chain by its text
        return composite
    params = {}
    m = re.fullmatch(r"(.*?)\[([^\[\]]*)\]", ref)
    if m:
        ref = m.group(1)
        for item in filter(None, (s.strip() for s in m.group(2).split(","))):
            name, eq, value = item.partition("=")
            if not eq:
                raise UnknownModel(f"model parameter {item!r} in {m.group(0)!r}: write NAME=VALUE")
            params[name.strip()] = value.strip()
    if ":" not in ref:
        if ref in NFS:
            return NFS[ref].configure(params)
        hint = " (a user model is written path/to/file.py:Class or package.module:Class)" if "." in ref or "/" in ref else ""
        raise UnknownModel(f"unknown NF {ref!r}; bundled: {', '.join(sorted(NFS))}{hint}")
    where, _, class_name = ref.rpartition(":")
    if not where or not class_name:
        raise UnknownModel(f"model reference {ref!r}: write path/to/file.py:Class or package.module:Class")
    module = _load_file(where) if where.endswith(".py") or os.sep in where or "/" in where else _load_module(where)
    cls = module
    for part in class_name.split("."):  # a nested class: Outer.Inner
        cls = getattr(cls, part, None)
    if cls is None:
        classes = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, NF) and v is not NF
                   and v.__module__ == module.__name__]
        raise UnknownModel(f"{where} has no class {class_name!r}; NF classes there: {', '.join(classes) or 'none'}")
    if not (inspect.isclass(cls) and issubclass(cls, NF)):
        raise UnknownModel(f"{where}:{class_name} is not an NF model (a subclass of nfproof.models.api.NF)")
    return cls.configure(params)


def _load_file(path: str):
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise UnknownModel(f"model file {path} not found")
    name = "nfproof_user_" + re.sub(r"\W", "_", os.path.basename(full)[:-3]) + "_" + \
        hashlib.sha1(full.encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except ParamError as e:  # a parameter value in the file's class bodies
        del sys.modules[name]
        raise ParamError(f"{_where(e, full)}{e}") from None
    except Exception as e:
        del sys.modules[name]
        raise UnknownModel(f"cannot load {path}: {_where(e, full)}{type(e).__name__}: {e}") from None
    return module


def _load_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise UnknownModel(f"no module {name!r} (is its package on PYTHONPATH? or give a file: path/to/file.py:Class)") from None
        raise UnknownModel(f"cannot load {name}: {type(e).__name__}: {e}") from None
    except ParamError:
        raise
    except Exception as e:
        raise UnknownModel(f"cannot load {name}: {type(e).__name__}: {e}") from None


def _where(error: Exception, filename: str) -> str:
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{error.filename}:{error.lineno}: "
    tb, line = error.__traceback__, None
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{filename}:{line}: " if line else ""


def model_ref(nf_cls: type[NF]) -> str:
    """A reference `lookup` loads back to an equivalent model: the bundled name, else
    `path/to/file.py:Class` or `module:Class`; with `[name=value,...]` for configured parameters.
    A class may state its own (a string class attribute `model_reference`, e.g. a chain's text)."""
    if isinstance(vars(nf_cls).get("model_reference"), str):  # a model that says how to load it (a chain)
        return vars(nf_cls)["model_reference"]
    base, given = vars(nf_cls).get("_configured_from", (nf_cls, ()))
    if NFS.get(base.name) is base:
        ref = base.name
    else:
        module = sys.modules.get(base.__module__)
        path = getattr(module, "__file__", None)
        if base.__module__ not in ("__main__", "builtins") and not base.__module__.startswith("nfproof_user_") \
                and "<locals>" not in base.__qualname__ and _finds(base.__module__, path):
            ref = f"{base.__module__}:{base.__qualname__}"
        else:  # a script, a file loaded by path, or a module another interpreter may not find
            ref = f"{os.path.abspath(path) if path else base.__module__}:{base.__qualname__}"
    if given:
        ref += "[" + ",".join(f"{k}={v}" for k, v in given) + "]"
    return ref


def _finds(module_name: str, path: str | None) -> bool:
    """Does importing `module_name` find this very file (a package module, not a stray script)?"""
    if "." not in module_name or not path:
        return False
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return False
    return bool(spec and spec.origin and os.path.abspath(spec.origin) == os.path.abspath(path))
