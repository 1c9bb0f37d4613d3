/* SPDX-License-Identifier: GPL-2.0 */
/* forward.h - next hop: configured MAC out of the ingress interface (XDP_TX),
 * or the kernel's FIB/neighbour table (bpf_fib_lookup) and a devmap redirect
 * for two-armed setups; unresolved neighbours are dropped and counted. */
#ifndef XDPLB_FORWARD_H
#define XDPLB_FORWARD_H

#include "maps.h"
#include "parse.h"
#include "stats.h"

#define AF_INET 2
#define AF_INET6 10

/* Back out of the ingress interface: its MAC becomes the source (knobs.if_mac
 * when the loader set it; else the frame's destination, which was ours). */
static __always_inline int tx_to_mac(struct xdp_md *ctx, const __u8 *mac)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (knobs.mac_check) { /* volatile reads: set by the loader */
		*(__u32 *)eth->h_source = *(const volatile __u32 *)knobs.if_mac;
		*(__u16 *)(eth->h_source + 4) = *(const volatile __u16 *)(knobs.if_mac + 4);
	} else
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	return XDP_TX;
}

/* Send to `mac` out of `ifindex`: 0 or the ingress interface is XDP_TX, any
 * other goes through the tx_ports devmap with that interface's MAC as source. */
static __always_inline int xmit_mac(struct xdp_md *ctx, const __u8 *mac, __u32 ifindex,
				    __u32 *stat)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct if_mac *src;

	if (!ifindex || ifindex == ctx->ingress_ifindex)
		return tx_to_mac(ctx, mac);
	src = bpf_map_lookup_elem(&if_macs, &ifindex);
	if (!src || (void *)(eth + 1) > (void *)(long)ctx->data_end) {
		*stat = ST_TX_ERROR;
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_source, src->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	return bpf_redirect_map(&tx_ports, ifindex, XDP_DROP);
}

/* Route the (already rewritten) packet to `dst` with the kernel's tables. */
static __always_inline int fib_forward(struct xdp_md *ctx, struct packet *pkt, const __u32 *src,
				       const __u32 *dst, __u16 sport, __u16 dport, __u32 *stat)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	long rc;

	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = pkt->key.proto;
	fib.sport = sport;
	fib.dport = dport;
	fib.tot_len = pkt->l4_len + (pkt->l4_off - pkt->l3_off);
	if (pkt->key.family == XDPLB_AF_INET) {
		fib.family = AF_INET;
		fib.ipv4_src = src[0];
		fib.ipv4_dst = dst[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	}
	/* OUTPUT: the rewritten packet leaves as if this host sent it (NAT: it did),
	 * so the lookup does not depend on the namespace forwarding */
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* a rewritten frame cannot go to the stack (its source is our own address);
		 * the control plane keeps the neighbours of MAC-less backends resolved */
		*stat = ST_DROP_NO_NEIGH;
		return XDP_DROP;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		*stat = ST_DROP_FIB;
		return XDP_DROP;
	}
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect_map(&tx_ports, fib.ifindex, XDP_PASS);
}

#endif
