"""xdplb: a layer-4 load balancer with an XDP data plane and a Python control plane.

The public API: a configuration (`load_config`, or `run_config` from the tutorial's
arguments) served by a `Daemon` (`ServeOptions`: with or without control socket and pins);
`LoadBalancer` turns `VipSpec`s into map writes on a data plane.

The names load on first use (PEP 562), so `import xdplb` is cheap and the command line can
arm its signal handlers before the heavy imports (numpy, pyroute2, libbpf)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import UsageError, XdplbError

if TYPE_CHECKING:
    from .config import Config, load_config
    from .daemon import Daemon, ServeOptions
    from .daemon.run_config import run_config
    from .lb import BackendSpec, LoadBalancer, VipSpec

_LAZY = {"Config": "config", "load_config": "config", "Daemon": "daemon",
         "ServeOptions": "daemon", "run_config": "daemon", "BackendSpec": "lb",
         "LoadBalancer": "lb", "VipSpec": "lb"}

__all__ = [
    "BackendSpec",
    "Config",
    "Daemon",
    "LoadBalancer",
    "ServeOptions",
    "UsageError",
    "VipSpec",
    "XdplbError",
    "__version__",
    "load_config",
    "run_config",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xdplb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
