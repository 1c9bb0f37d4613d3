// SPDX-License-Identifier: GPL-2.0
/* floors.bpf.c - the floors every measured program is compared with:
 * xdp_empty  returns XDP_PASS without touching the frame (the cost of the
 *            BPF_PROG_TEST_RUN machinery itself);
 * xdp_tx     swaps the Ethernet addresses and returns XDP_TX (the least a
 *            one-armed forwarder must do);
 * xdp_flow   xdp_tx plus one access to a flow table of the size xdplb's bench
 *            instance has (one 64-byte entry of a 16 MiB array, at a hash of the
 *            IPv4 5-tuple, written when it is not the flow's): the least any
 *            stateful balancer pays for a flow, a cold memory access when the
 *            flow is new. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct flow_slot {
	__u32 saddr, daddr, ports;
	__u8 proto, used;
	__u8 pad[50];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_MMAPABLE); /* allocated like xdplb's flows */
	__type(key, __u32);
	__type(value, struct flow_slot);
} flow_floor SEC(".maps");

SEC("xdp")
int xdp_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

SEC("xdp")
int xdp_flow(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct iphdr *ip = (void *)(eth + 1);
	struct flow_slot *f;
	__u8 tmp[ETH_ALEN];
	__u32 *ports, h, idx;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ports = (void *)ip + ip->ihl * 4;
	if ((void *)(ports + 1) > data_end)
		return XDP_PASS;
	h = (ip->saddr * 0x9E3779B1u) ^ (ip->daddr * 0x85EBCA77u) ^ (*ports * 0xC2B2AE3Du) ^
	    ip->protocol;
	h ^= h >> 15;
	idx = h & ((1 << 18) - 1);
	f = bpf_map_lookup_elem(&flow_floor, &idx);
	if (!f)
		return XDP_ABORTED;
	if (!f->used || f->saddr != ip->saddr || f->daddr != ip->daddr || f->ports != *ports ||
	    f->proto != ip->protocol) {
		f->saddr = ip->saddr;
		f->daddr = ip->daddr;
		f->ports = *ports;
		f->proto = ip->protocol;
		f->used = 1;
	}
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
