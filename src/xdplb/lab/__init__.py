"""Namespace topologies for trying and testing xdplb without touching the host's network.

``Lab`` builds the tutorial's topology (client, LB, backends h2/h3 on bridge br0) inside
network namespaces named ``<name>-<host>`` and removes them on ``down()``, on error and on
Ctrl-C.  ``ContainerLab`` is the same with every host a container of the xdplb image;
``EcmpLab`` is the scale-out topology (a BGP router with ECMP in front of N xdplb nodes);
``PairLab`` the L2 failover pair (two nodes on one segment, keepalived holding the VIP).
``xdplb lab up|down|status|exec`` is the same from the command line.
"""
from .cli import register_cli
from .containers import ContainerError, ContainerLab, Podman
from .ecmp import EcmpLab
from .pair import PairLab
from .plan import Host, LabError, backend_numbers, client_numbers, plan_hosts
from .topology import Lab, LabNotFound, sigterm_as_interrupt, state_dir

__all__ = [
    "ContainerError",
    "ContainerLab",
    "EcmpLab",
    "Host",
    "Lab",
    "LabError",
    "LabNotFound",
    "PairLab",
    "Podman",
    "backend_numbers",
    "client_numbers",
    "plan_hosts",
    "register_cli",
    "sigterm_as_interrupt",
    "state_dir",
]
