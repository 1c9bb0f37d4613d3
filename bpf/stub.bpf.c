// SPDX-License-Identifier: GPL-2.0
/* stub.bpf.c - XDP_PASS for the far end of a veth: a veth only delivers
 * XDP_TX/XDP_REDIRECT frames when its peer has an XDP program (or GRO). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
