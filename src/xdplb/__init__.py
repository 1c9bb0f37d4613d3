"""xdplb: a layer-4 load balancer with an XDP data plane and a Python control plane.

The public API: a configuration (`load_config`, or `run_config` from the tutorial's
arguments) served by a `Daemon` (`ServeOptions`: with or without control socket and pins);
`LoadBalancer` turns `VipSpec`s into map writes on a data plane."""
from ._version import __version__
from .config import Config, load_config
from .daemon import Daemon, ServeOptions, run_config
from .errors import UsageError, XdplbError
from .lb import BackendSpec, LoadBalancer, VipSpec

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
