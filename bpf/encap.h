/* SPDX-License-Identifier: GPL-2.0 */
/* encap.h - tunnel modes (ipip, gue): the client's packet, unchanged but for a
 * finished CHECKSUM_PARTIAL checksum, goes inside an outer IP header (plus a UDP
 * header for GUE) from the backend entry's tunnel source to the backend.
 *  - ipip: protocol 4 (IPv4 inside) or 41 (IPv6 inside); the control plane
 *    keeps the outer family equal to the inner one.
 *  - gue: variant 1 (the inner IP header right after the UDP header), outer
 *    family = the backend's; UDP source port from the flow hash, destination
 *    knobs.gue_port. UDP checksum 0 over IPv4; over IPv6 it is computed
 *    (RFC 6936 lets tunnels send 0, but receivers must be set up to accept it)
 *    in constant time from the inner packet's own checksum (RFC 7325 style
 *    "local checksum offload": a segment with a valid checksum sums to the
 *    complement of its pseudo-header).
 *  - second chance (GitHub GLB's idea): when a gue VIP's Maglev table changed, a
 *    non-SYN TCP packet whose slot had another backend before carries that
 *    backend in a GUE variant 0 header (GUE_F_HINT, 4 or 16 address bytes); the
 *    backends' decapsulator sends the packet on to it when it has no connection
 *    for it (decap.bpf.c), so no flow breaks when a backend is added or removed.
 *  - outer TTL/hop limit and DSCP/ECN copied from the inner header; IPv4 DF set
 *    (id 0); IPv6 flow label from the flow hash.
 * Next hop: the backend entry's MAC (bpf_check_mtu on the egress device, skipped
 * for outer packets of at most 1280 bytes), else bpf_fib_lookup (its MTU check). Too big once encapsulated: the client gets
 * ICMP "fragmentation needed" / ICMPv6 "packet too big" with the MTU less the
 * overhead (pmtu_reply), rate-limited per CPU; an IPv4 packet without DF is
 * dropped (counted), as a router would have to fragment it. src/xdplb/model.py
 * mirrors every byte. */
#ifndef XDPLB_ENCAP_H
#define XDPLB_ENCAP_H

#include "csum.h"
#include "forward.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "trace.h"

#define PMTU_QUOTE_MAX 128 /* quoted IP header(s) + 8 bytes of L4, at most */
#define TUNNEL_SMALL 1280  /* outer packets this long fit any link (IPv6's minimum MTU) */

/* The encapsulation is not done inside process_packet: its frame (bpf_fib_lookup's
 * 64-byte argument, pmtu_reply's below it) would sit on top of process_packet's,
 * and the deepest chain (entry, process_packet, nat_claim, nat_set_pick) already
 * comes near the verifier's 512 bytes. balance() returns a tunnel request instead;
 * the entry hands it to tunnel_forward(), a global function of its own:
 * TUNNEL_REQ | TUNNEL_GUE (mode gue, else ipip) | TUNNEL_NEW (a new flow) | the
 * backend id (the loader caps backends at 2^24), the flow hash in pkt->tun_hash. */
#define TUNNEL_REQ (1u << 30)
#define TUNNEL_GUE (1u << 29)
#define TUNNEL_NEW (1u << 28)
#define TUNNEL_BACKEND 0x00ffffffu

static __always_inline int is_tunnel(const struct vip_info *vip)
{
	return vip->mode == XDPLB_MODE_IPIP || vip->mode == XDPLB_MODE_GUE;
}

/* The backend id the packet's slot had before the VIP's last table change, when it is
 * another one of the same family (the hint of the second chance); XDPLB_NO_BACKEND: none.
 * Not inlined: asked only of gue VIPs whose table changed (VIP_F_PREV_RING). */
static __attribute__((noinline)) __u32 tunnel_hint(const struct vip_info *vip,
						   const struct packet *pkt, __u32 hash,
						   const struct backend *be, __u32 be_id)
{
	__u32 vip_id, slot, *id;
	const struct backend *prev;
	void *ring;

	if (!vip || !pkt || !be || vip->mode != XDPLB_MODE_GUE || !vip->ring_size ||
	    pkt->key.proto != IPPROTO_TCP || (pkt->tcp_flags & TCPF_SYN))
		return XDPLB_NO_BACKEND;
	vip_id = vip->vip_id;
	ring = bpf_map_lookup_elem(&prev_rings, &vip_id);
	if (!ring)
		return XDPLB_NO_BACKEND;
	slot = hash % vip->ring_size;
	id = bpf_map_lookup_elem(ring, &slot);
	if (!id || *id == be_id || *id == XDPLB_NO_BACKEND)
		return XDPLB_NO_BACKEND;
	prev = bpf_map_lookup_elem(&backends, id);
	if (!prev || prev->family != be->family)
		return XDPLB_NO_BACKEND;
	return *id;
}

/* balance()'s side: what the entry needs to encapsulate to backend `be`. */
static __always_inline int tunnel_request(struct packet *pkt, const struct vip_info *vip,
					  const struct backend *be, __u32 be_id, __u32 hash,
					  __u32 stat)
{
	pkt->tun_hash = hash;
	pkt->tun_hint = (vip->flags & VIP_F_PREV_RING) ? /* a call only then */
				tunnel_hint(vip, pkt, hash, be, be_id) : XDPLB_NO_BACKEND;
	return TUNNEL_REQ | (vip->mode == XDPLB_MODE_GUE ? TUNNEL_GUE : 0) |
	       (stat == ST_FWD_NEW ? TUNNEL_NEW : 0) | (be_id & TUNNEL_BACKEND);
}

/* Outer UDP source port (network order): ephemeral range, from the flow hash. */
static __always_inline __u16 gue_sport(__u32 hash)
{
	return bpf_htons(0xc000 | (hash & 0x3fff));
}

/* Outer IPv6 flow label (host order, 20 bits) from the flow hash. */
static __always_inline __u32 tunnel_label(__u32 hash)
{
	return (hash >> 12) & 0xfffff;
}

/* Answer the client of a packet too big for the tunnel with ICMP frag-needed
 * (IPv4) or packet-too-big (IPv6) carrying `mtu`, from the VIP, back out of the
 * ingress interface. Quotes the IP header(s) and 8 bytes of L4 header, what
 * the client's stack needs to find its socket. XDP_TX, or XDP_DROP when over
 * the per-CPU budget (knobs.pmtu_rate a second) or unable. A global function:
 * the rare path is verified once, apart from the forwarding path. */
__attribute__((noinline)) int pmtu_reply(struct xdp_md *ctx, struct packet *pkt, __u32 mtu)
{
	__u32 zero = 0, l3_off, quote, hdr, cur, len;
	struct pmtu_budget *b;
	__u8 macs[2 * ETH_ALEN]; /* the client's frame's destination and source */
	const __u32 *client, *vip;
	void *data, *data_end;
	struct ethhdr *eth;
	__u64 win, hz;
	int v4;
	__s64 sum;

	if (!pkt)
		return XDP_DROP;
	b = bpf_map_lookup_elem(&pmtu_budget, &zero);
	if (!b)
		return XDP_DROP;
	hz = runtime.hz ? runtime.hz : 1000;
	win = bpf_jiffies64() / hz;
	if (b->window != win) {
		b->window = win;
		b->sent = 0;
	}
	if (b->sent >= knobs.pmtu_rate)
		return XDP_DROP;
	b->sent++;

	v4 = pkt->key.family == XDPLB_AF_INET;
	l3_off = pkt->l3_off;
	quote = pkt->l4_off - l3_off + 8;
	hdr = v4 ? sizeof(struct iphdr) + 8 : sizeof(struct ipv6hdr) + 8;
	if (l3_off > 18 || quote > PMTU_QUOTE_MAX)
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(macs, eth, 2 * ETH_ALEN);
	client = pkt->key.src;
	vip = pkt->key.dst;

	/* the quote stays where it is; the new headers go in front of it */
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(*eth) + hdr - l3_off)))
		return XDP_DROP;
	/* adjust_head moved the packet: pointers from before are invalid */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	cur = data_end - data;
	len = sizeof(*eth) + hdr + quote;
	if (cur < len || bpf_xdp_adjust_tail(ctx, (int)len - (int)cur))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, macs + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(eth->h_source, macs, ETH_ALEN);
	if (v4) {
		struct iphdr *ip = (void *)(eth + 1);
		__u8 *icmp = (void *)(ip + 1);
		__u32 *w = (void *)ip;

		if ((void *)(icmp + 8) > data_end)
			return XDP_DROP;
		eth->h_proto = bpf_htons(ETH_P_IP);
		w[0] = bpf_htonl(0x45c00000 | (hdr + quote)); /* tos: internetwork control */
		w[1] = 0;                                      /* id 0, no DF */
		w[2] = bpf_htonl(0x40010000);                  /* ttl 64, ICMP, check 0 */
		ip->saddr = vip[0];
		ip->daddr = client[0];
		ip->check = ~csum_fold64((__u64)w[0] + w[1] + w[2] + w[3] + w[4]);
		*(__u32 *)icmp = bpf_htonl(0x03040000); /* dest unreachable, frag needed */
		*(__u32 *)(icmp + 4) = bpf_htonl(mtu & 0xffff);
		sum = csum_frame(ctx, sizeof(*eth) + sizeof(*ip), 8 + quote);
		if (sum < 0)
			return XDP_DROP;
	} else {
		struct ipv6hdr *ip = (void *)(eth + 1);
		__u8 *icmp = (void *)(ip + 1);
		__u32 *w = (void *)ip;

		if ((void *)(icmp + 8) > data_end)
			return XDP_DROP;
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		w[0] = bpf_htonl(0x60000000);
		w[1] = bpf_htonl(((8 + quote) << 16) | (IPPROTO_ICMPV6 << 8) | 64);
		__builtin_memcpy(&ip->saddr, vip, 16);
		__builtin_memcpy(&ip->daddr, client, 16);
		*(__u32 *)icmp = bpf_htonl(0x02000000); /* packet too big */
		*(__u32 *)(icmp + 4) = bpf_htonl(mtu);
		sum = csum_frame(ctx, sizeof(*eth) + sizeof(*ip), 8 + quote);
		if (sum < 0)
			return XDP_DROP;
		sum += csum_pseudo(vip, client, 4, IPPROTO_ICMPV6, 8 + quote);
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	{
		__u16 *check = data + sizeof(*eth) + (v4 ? 20 : 40) + 2;

		if ((void *)(check + 1) > data_end)
			return XDP_DROP;
		*check = ~csum_fold64(sum);
	}
	return XDP_TX;
}

/* Sum of the inner packet (IP header(s) and L4 segment) for the outer UDP
 * checksum over IPv6, without reading the payload when the L4 checksum is set:
 * a valid IPv4 header sums to 0xffff, a segment with a valid checksum to the
 * complement of its pseudo-header. -1: cannot (UDP/IPv4 without checksum over
 * more than csum_frame covers). */
static __always_inline __s64 inner_sum(struct xdp_md *ctx, const struct packet *pkt)
{
	int v4 = pkt->key.family == XDPLB_AF_INET;
	__u32 l4_off = pkt->l4_off;
	__s64 s, seg;

	if (v4) {
		s = 0xffff;
	} else {
		s = csum_frame(ctx, pkt->l3_off, l4_off - pkt->l3_off);
		if (s < 0)
			return -1;
	}
	if (v4 && pkt->key.proto == IPPROTO_UDP) {
		__u16 *check = (void *)(long)ctx->data + (l4_off & 0x1ff) + 6;

		if ((void *)(check + 1) > (void *)(long)ctx->data_end)
			return -1;
		if (!*check) { /* no checksum to lean on: sum the segment */
			seg = csum_frame(ctx, l4_off, pkt->l4_len);
			return seg < 0 ? -1 : s + seg;
		}
	}
	return s + (__u16)~csum_fold64(csum_pseudo(pkt->key.src, pkt->key.dst, v4 ? 1 : 4,
						 pkt->key.proto, pkt->l4_len));
}

/* Encapsulate the client's packet to backend `be` and send it. *stat is kept
 * (FWD_NEW/FWD_EST) or replaced by what happened instead. */
static __always_inline int tunnel_xmit(struct xdp_md *ctx, struct packet *pkt,
				       const struct backend *be, int gue, const struct backend *hint,
				       __u32 hash, __u32 *stat)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3_off = pkt->l3_off, inner_len, hdr_len, hint_len, mtu = 0, ifindex = 0;
	int out4 = be->family == XDPLB_AF_INET;
	int in4 = pkt->key.family == XDPLB_AF_INET;
	__u8 proto = gue ? IPPROTO_UDP : (in4 ? IPPROTO_IPIP : IPPROTO_IPV6);
	struct bpf_fib_lookup fib; /* also holds the MACs */
	__u8 tos, ttl, df = 1;
	__u16 sport = gue_sport(hash), ucheck = 0;
	struct ethhdr *eth = data;
	int too_big = 0, fib_path = !(be->flags & BE_F_MAC);

	if (l3_off > 18 || (void *)(eth + 1) > data_end)
		return XDP_DROP;
	inner_len = pkt->l4_off - l3_off + pkt->l4_len;
	hint_len = hint ? 4 + (out4 ? 4 : 16) : 0; /* GUE variant 0 header + the address */
	hdr_len = (out4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr)) + (gue ? 8 : 0) + hint_len;
	if (in4) {
		struct iphdr *ih = data + l3_off;

		if ((void *)(ih + 1) > data_end)
			return XDP_DROP;
		tos = ih->tos;
		ttl = ih->ttl;
		df = !!(ih->frag_off & bpf_htons(0x4000));
	} else {
		struct ipv6hdr *ih = data + l3_off;

		if ((void *)(ih + 1) > data_end)
			return XDP_DROP;
		tos = (ih->priority << 4) | (ih->flow_lbl[0] >> 4);
		ttl = ih->hop_limit;
	}

	if (fib_path) {
		long rc;

		__builtin_memset(&fib, 0, sizeof(fib));
		fib.ifindex = ctx->ingress_ifindex;
		fib.l4_protocol = proto;
		fib.sport = gue ? sport : 0;
		fib.dport = gue ? knobs.gue_port : 0;
		fib.tot_len = inner_len + hdr_len;
		if (out4) {
			fib.family = AF_INET;
			fib.ipv4_src = be->snat_addr[0];
			fib.ipv4_dst = be->addr[0];
		} else {
			fib.family = AF_INET6;
			__builtin_memcpy(fib.ipv6_src, be->snat_addr, 16);
			__builtin_memcpy(fib.ipv6_dst, be->addr, 16);
		}
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
			too_big = 1;
			mtu = fib.mtu_result;
		} else if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
			/* the LB's host would answer a SYN to its own VIP with a reset: drop,
			 * the client retransmits once the control plane resolved it */
			*stat = ST_DROP_NO_NEIGH;
			return XDP_DROP;
		} else if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
			*stat = ST_TUNNEL_NO_ROUTE;
			return XDP_PASS;
		} else {
			ifindex = fib.ifindex;
		}
	} else {
		ifindex = be->flags & BE_F_REDIRECT ? be->ifindex : 0;
		/* at most IPv6's minimum link MTU once wrapped: fits, no helper call */
		if (inner_len + hdr_len > TUNNEL_SMALL &&
		    bpf_check_mtu(ctx, ifindex, &mtu, (__s32)(sizeof(*eth) + hdr_len - l3_off), 0) ==
			    BPF_MTU_CHK_RET_FRAG_NEEDED)
			too_big = 1;
		__builtin_memcpy(fib.smac, eth->h_dest, ETH_ALEN); /* xmit_mac sets the source */
	}
	if (too_big) {
		if (in4 && !df) {
			*stat = ST_PMTU_DROP;
			return XDP_DROP;
		}
		if (pmtu_reply(ctx, pkt, mtu > hdr_len ? mtu - hdr_len : 0) == XDP_TX) {
			*stat = ST_PMTU_ICMP;
			return XDP_TX;
		}
		*stat = ST_PMTU_DROP;
		return XDP_DROP;
	}
	if (gue && !out4) {
		__s64 s = inner_sum(ctx, pkt);

		if (s < 0) {
			*stat = ST_PASS_TOO_LONG;
			return XDP_PASS;
		}
		s += csum_pseudo(be->snat_addr, be->addr, 4, IPPROTO_UDP, inner_len + 8 + hint_len) +
		     sport + knobs.gue_port + bpf_htons((__u16)(inner_len + 8 + hint_len));
		if (hint) /* the GUE header's word and the (IPv6) address */
			s += bpf_htonl(0x04000000 | ((__u32)(in4 ? IPPROTO_IPIP : IPPROTO_IPV6) << 16) |
				       GUE_F_HINT) + csum_words(hint->addr, 4);
		ucheck = ~csum_fold64(s);
		if (!ucheck)
			ucheck = 0xffff;
	}

	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(*eth) + hdr_len - l3_off))) {
		*stat = ST_TX_ERROR; /* no headroom */
		return XDP_DROP;
	}
	/* adjust_head moved the packet start: re-derive every pointer */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	eth->h_proto = out4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	if (out4) {
		struct iphdr *oh = (void *)(eth + 1);
		__u32 *w = (void *)oh;

		if ((void *)(oh + 1) > data_end)
			return XDP_DROP;
		w[0] = bpf_htonl(0x45000000 | ((__u32)tos << 16) | (inner_len + hdr_len));
		w[1] = bpf_htonl(0x00004000); /* id 0, DF */
		w[2] = bpf_htonl(((__u32)ttl << 24) | ((__u32)proto << 16));
		oh->saddr = be->snat_addr[0];
		oh->daddr = be->addr[0];
		oh->check = ~csum_fold64((__u64)w[0] + w[1] + w[2] + w[3] + w[4]);
	} else {
		struct ipv6hdr *oh = (void *)(eth + 1);
		__u32 *w = (void *)oh;

		if ((void *)(oh + 1) > data_end)
			return XDP_DROP;
		w[0] = bpf_htonl(0x60000000 | ((__u32)tos << 20) | tunnel_label(hash));
		w[1] = bpf_htonl(((inner_len + hdr_len - 40) << 16) | ((__u32)proto << 8) | ttl);
		__builtin_memcpy(&oh->saddr, be->snat_addr, 16);
		__builtin_memcpy(&oh->daddr, be->addr, 16);
	}
	if (gue) {
		struct udphdr *uh = (void *)(eth + 1) + (out4 ? 20 : 40);

		if ((void *)(uh + 1) > data_end)
			return XDP_DROP;
		uh->source = sport;
		uh->dest = knobs.gue_port;
		uh->len = bpf_htons(inner_len + 8 + hint_len);
		uh->check = ucheck;
		if (hint) {
			__u32 *g = (void *)(uh + 1);

			if ((void *)(g + 5) > data_end)
				return XDP_DROP;
			/* variant 0, Hlen = the address in 32-bit words, the inner protocol */
			g[0] = bpf_htonl(((out4 ? 1u : 4u) << 24) |
					 ((__u32)(in4 ? IPPROTO_IPIP : IPPROTO_IPV6) << 16) | GUE_F_HINT);
			g[1] = hint->addr[0];
			if (!out4) {
				g[2] = hint->addr[1];
				g[3] = hint->addr[2];
				g[4] = hint->addr[3];
			}
			count_stat(ST_GUE_HINT, 0);
		}
	}
	if (!fib_path) {
		/* ours: tx_to_mac makes it the source */
		__builtin_memcpy(eth->h_dest, fib.smac, ETH_ALEN);
		return xmit_mac(ctx, be->mac, ifindex, stat);
	}
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	if (ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect_map(&tx_ports, ifindex, XDP_DROP);
}

/* The entry's side of a tunnel request (see TUNNEL_REQ): encapsulate, send, count. */
__attribute__((noinline)) int tunnel_forward(struct xdp_md *ctx, struct packet *pkt, __u32 req)
{
	__u32 be_id = req & TUNNEL_BACKEND, stat = req & TUNNEL_NEW ? ST_FWD_NEW : ST_FWD_EST;
	const struct backend *hint;
	struct backend *be;
	__u32 hint_id;
	int action;

	if (!pkt)
		return XDP_DROP;
	be = bpf_map_lookup_elem(&backends, &be_id);
	if (!be)
		return verdict(pkt, ST_DROP_NO_BACKEND, XDP_DROP);
	hint_id = pkt->tun_hint;
	hint = hint_id == XDPLB_NO_BACKEND ? 0 : bpf_map_lookup_elem(&backends, &hint_id);
	action = tunnel_xmit(ctx, pkt, be, req & TUNNEL_GUE, hint, pkt->tun_hash, &stat);
	count_obj(&be_stats, be_id, pkt->frame_len, stat == ST_FWD_NEW);
	trace_decision(pkt, be->addr, pkt->key.dport, be->vip_id, be_id, action, stat);
	return verdict(pkt, stat, action);
}

#endif
