"""Test support shared by the test tiers and pcap export: the packet-case table (cases),
its runner, frame diffs, the bpf-tier pytest fixtures and a BTF reader. `python -m
xdplb.testing --pcap DIR` writes every case as a pcap (see __main__.py)."""
