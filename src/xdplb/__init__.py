"""xdplb: a layer-4 load balancer with an XDP data plane and a Python control plane."""
from .errors import UsageError, XdplbError
from .lb import BackendSpec, LoadBalancer, VipSpec
from .service import Service, ServiceOptions

__version__ = "0.1.0"

__all__ = [
    "BackendSpec",
    "LoadBalancer",
    "Service",
    "ServiceOptions",
    "UsageError",
    "VipSpec",
    "XdplbError",
    "__version__",
]
