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
 *            flow is new;
 * xdp_encap  xdp_tx plus bpf_xdp_adjust_head and a 20-byte IPv4 header: the
 *            least an encapsulating forwarder pays. */
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

/* xdp_encap: xdp_tx plus 20 bytes of headroom taken (bpf_xdp_adjust_head) and an
 * IPv4 header with its checksum written there: the least an encapsulating forwarder
 * (IPIP, GUE) pays on top of xdp_tx. */
SEC("xdp")
int xdp_encap(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data, *ne;
	__u8 dst[ETH_ALEN], src[ETH_ALEN];
	struct iphdr *ip;
	__u32 *w, len;
	__u64 s;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	__builtin_memcpy(dst, eth->h_source, ETH_ALEN);
	__builtin_memcpy(src, eth->h_dest, ETH_ALEN);
	len = (long)ctx->data_end - (long)ctx->data - sizeof(*eth);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_DROP;
	ne = (void *)(long)ctx->data; /* the packet moved */
	ip = (void *)(ne + 1);
	if ((void *)(ip + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	__builtin_memcpy(ne->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(ne->h_source, src, ETH_ALEN);
	ne->h_proto = bpf_htons(ETH_P_IP);
	w = (void *)ip;
	w[0] = bpf_htonl(0x45000000 | ((len + 20) & 0xffff));
	w[1] = bpf_htonl(0x4000);
	w[2] = bpf_htonl(0x40040000);
	w[3] = 0x0100000a;
	w[4] = 0x0201000a;
	s = (__u64)w[0] + w[1] + w[2] + w[3] + w[4];
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	ip->check = ~(__u16)s;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
