// SPDX-License-Identifier: GPL-2.0
/* rehash.bpf.c - tc ingress program for the ECMP lab's router: frames sent by a
 * local socket over veth arrive with the socket's skb hash, and a multipath
 * route follows that hash instead of the 5-tuple (and moves a flow whenever the
 * sender rethinks its hash). Clearing it makes the router hash the 5-tuple, as
 * a router fed by a physical NIC does. Lab only; never on the xdplb node. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int clear_hash(struct __sk_buff *skb)
{
	bpf_set_hash_invalid(skb);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
