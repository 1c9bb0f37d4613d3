"""xdplb: a layer-4 load balancer with an XDP data plane and a Python control plane.

The public API: a configuration (`load_config`, or `run_config` from the tutorial's
arguments) served by a `Daemon` (`ServeOptions`: with or without control socket and pins);
`LoadBalancer` turns `VipSpec`s into map writes on a data plane."""
from .config import Config, load_config
from .daemon import Daemon, ServeOptions, run_config
from .errors import UsageError, XdplbError
from .lb import BackendSpec, LoadBalancer, VipSpec

__version__ = "0.1.0"

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
