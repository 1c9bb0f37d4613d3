"""bpf tier: root, the real object under BPF_PROG_TEST_RUN, no namespaces."""
from xdplb.testing.fixtures import *
