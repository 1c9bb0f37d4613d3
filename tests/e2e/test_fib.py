"""Backends configured without a MAC: the next hop comes from the kernel's FIB and
neighbour table (bpf_fib_lookup); `serve` keeps those neighbours resolved."""
from __future__ import annotations

import pytest
from test_serve import Backends, curls, serving

pytestmark = pytest.mark.e2e


def test_backends_without_mac_are_reached_through_the_fib(lab, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Backends(lab, tmp_path)
    config = tmp_path / "lb.toml"
    config.write_text(f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{lab.name}"\n\n'
                      '[[vip]]\nname = "web"\naddress = "10.0.0.10"\nport = 8000\n\n'
                      '[[vip.backend]]\naddress = "10.0.0.2"\n\n'
                      '[[vip.backend]]\naddress = "10.0.0.3"\n')
    with serving(lab, config, run_dir) as lb:
        got = []
        for _ in range(3):  # the first SYNs may meet an unresolved neighbour
            got = curls(lab, 20)
            if got.count("h2") + got.count("h3") == 20:
                break
        assert got.count("h2") + got.count("h3") == 20 and {"h2", "h3"} <= set(got), got
        neigh = lab.run("lb", ["ip", "neigh", "show", "dev", "veth6"]).stdout
        assert "10.0.0.2" in neigh and "10.0.0.3" in neigh
        # a SYN met before the MAC was learnt is dropped after its flow entry was made:
        # its retransmission then counts as established, not new
        assert lb.status()["vips"][0]["new_flows"] >= 19
