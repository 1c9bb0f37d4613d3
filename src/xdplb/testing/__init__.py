"""Test support shared by the test tiers, benchmarks and pcap export: the packet-case
table (cases), its runner, frame diffs, the bpf-tier pytest fixtures and a BTF reader."""
