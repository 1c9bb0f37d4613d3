// SPDX-License-Identifier: GPL-2.0
/* decap.bpf.c - the backends' decapsulator for the tunnel modes (XDP).
 *
 * Strips IPIP (IPv4 or IPv6 inside, IPv4 or IPv6 outside) and GUE on
 * dknobs.gue_port (variant 1: IP right after UDP; variant 0: a GUE header,
 * optional fields skipped, protocol 4 or 41), then hands the inner packet to
 * the stack (XDP_PASS) as if it had arrived that way. Only for inner
 * destinations of this host: the kernel's FIB says so (a local route is "not
 * forwarded"; with forwarding off on the interface the stack itself accepts
 * only local destinations), an answer each CPU keeps for LOCAL_FRESH jiffies in
 * a small direct-mapped cache (a FIB lookup costs more than the rest of the
 * program). Anything else is passed untouched, counted by reason. The outer UDP checksum is not verified: the inner packet carries its
 * own. Second chance: a GUE packet that carries xdplb's hint (GUE_F_HINT: the
 * backend its flow had before the LB's Maglev table changed), is TCP without
 * SYN and finds no connection here (bpf_skc_lookup_tcp: none, or only a
 * listener) is sent on to the hinted backend instead of letting the stack
 * answer with a reset: outer addresses rewritten (from here to there, checksums
 * updated), the hint flag turned into GUE_F_REDIRECTED (never twice), back out
 * to the MAC it came from (the router that knows the way). Written for
 * `xdplb decap IFACE`. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "csum.h"

#define AF_INET 2
#define AF_INET6 10
#define TCPF_SYN 0x02

#define LOCAL_FRESH 256 /* jiffies a cached FIB answer is used (0.25 s to 2.5 s) */

/* 0 -> this CPU's counters and cache of FIB answers (abi.h struct decap_state). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_state);
} decap_state SEC(".maps");

const volatile struct decap_knobs dknobs = {
	.gue_port = 0xc017, /* 6080, network order */
};

static __always_inline int count_decap(struct decap_state *st, __u32 idx, __u32 bytes,
				       int action)
{
	if (st && idx < DS__MAX) {
		st->stats[idx].packets++;
		st->stats[idx].bytes += bytes;
	}
	return action;
}

/* The IP header at `inner` (IPv4 or not): is its destination ours? 1, 0, or -1 when
 * the header is truncated. */
static __always_inline int inner_is_local(struct xdp_md *ctx, struct decap_state *st,
					  void *inner, void *data_end, int v4)
{
	struct bpf_fib_lookup fib = {};
	struct decap_local *c;
	__u32 dst[4] = {}, h;
	__u64 now;
	long rc;

	if (v4) {
		struct iphdr *ih = inner;

		if ((void *)(ih + 1) > data_end)
			return -1;
		dst[0] = ih->daddr;
	} else {
		struct ipv6hdr *ih = inner;

		if ((void *)(ih + 1) > data_end)
			return -1;
		__builtin_memcpy(dst, &ih->daddr, 16);
	}
	h = ((dst[0] ^ dst[1] ^ dst[2] ^ dst[3]) * 0x9E3779B1u) >> 28; /* 0 .. DECAP_CACHE-1 */
	c = &st->cache[h & (DECAP_CACHE - 1)];
	now = bpf_jiffies64();
	if (c->stamp && now - c->stamp < LOCAL_FRESH && c->addr[0] == dst[0] &&
	    c->addr[1] == dst[1] && c->addr[2] == dst[2] && c->addr[3] == dst[3])
		return c->local;

	fib.ifindex = ctx->ingress_ifindex;
	if (v4) {
		struct iphdr *ih = inner;

		fib.family = AF_INET;
		fib.ipv4_src = ih->saddr;
		fib.ipv4_dst = dst[0];
	} else {
		struct ipv6hdr *ih = inner;

		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, &ih->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	}
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	/* NOT_FWDED: a local (or broadcast) route; FWD_DISABLED: this interface does not
	 * forward, so the stack delivers the packet only if it is ours */
	__builtin_memcpy(c->addr, dst, 16);
	c->local = rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED;
	c->stamp = now ? now : 1;
	return c->local;
}

static __always_inline __u16 fold_replace(__u16 check, __u64 delta)
{
	__u64 s = (__u16)~check + delta;

	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~(__u16)s;
}

/* Is there a connection (not only a listener) here for the inner TCP packet at
 * `inner`? 1 yes, 0 no, -1 not a TCP segment without SYN (no second chance). */
static __always_inline int has_connection(struct xdp_md *ctx, void *inner, void *data_end,
					  int v4)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u8 *th;
	__u32 size, state;

	if (v4) {
		struct iphdr *ih = inner;

		if ((void *)(ih + 1) > data_end || ih->protocol != IPPROTO_TCP || ih->ihl != 5 ||
		    (ih->frag_off & bpf_htons(0x3fff)))
			return -1;
		th = (void *)(ih + 1);
		t.ipv4.saddr = ih->saddr;
		t.ipv4.daddr = ih->daddr;
		size = sizeof(t.ipv4);
	} else {
		struct ipv6hdr *ih = inner;

		if ((void *)(ih + 1) > data_end || ih->nexthdr != IPPROTO_TCP)
			return -1;
		th = (void *)(ih + 1);
		__builtin_memcpy(t.ipv6.saddr, &ih->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ih->daddr, 16);
		size = sizeof(t.ipv6);
	}
	if ((void *)(th + 20) > data_end || (th[13] & TCPF_SYN))
		return -1;
	if (v4) {
		t.ipv4.sport = *(__u16 *)th;
		t.ipv4.dport = *(__u16 *)(th + 2);
	} else {
		t.ipv6.sport = *(__u16 *)th;
		t.ipv6.dport = *(__u16 *)(th + 2);
	}
	sk = (struct bpf_sock *)bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	state = sk->state;
	bpf_sk_release(sk);
	return state != BPF_TCP_LISTEN;
}

/* Send the GUE packet on to the hinted backend (1 or 4 words right after the 4-byte
 * GUE header at offset `gue_off`), from this host's outer address. */
static __always_inline int second_chance(struct xdp_md *ctx, __u32 gue_off, int v4)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	__u32 *g, old_g, new_g, hint[4] = {}, me[4] = {}, peer[4] = {};
	struct udphdr *uh;
	__u8 mac[ETH_ALEN];
	__u64 delta;

	if (gue_off < sizeof(*eth) + sizeof(struct iphdr) + sizeof(*uh) || gue_off > 128)
		return -1;
	gue_off -= sizeof(*uh);
	asm volatile("%0 &= 0x7f" : "+r"(gue_off)); /* a bound the verifier keeps */
	uh = data + gue_off; /* the UDP header, then the GUE header */
	g = (void *)(uh + 1);
	if ((void *)(eth + 1) > data_end || (void *)(uh + 1) > data_end ||
	    (void *)(g + 5) > data_end)
		return -1;
	old_g = g[0];
	new_g = (old_g & ~bpf_htonl(GUE_F_HINT)) | bpf_htonl(GUE_F_REDIRECTED);
	if (v4) {
		struct iphdr *oh = l3;

		if ((void *)(oh + 1) > data_end)
			return -1;
		hint[0] = g[1];
		me[0] = oh->daddr;
		peer[0] = oh->saddr;
		if (hint[0] == me[0])
			return -1; /* a hint to ourselves: deliver here */
		delta = csum_words_neg(peer, 1) + csum_words_neg(me, 1) + csum_words(me, 1) + csum_words(hint, 1);
		oh->check = fold_replace(oh->check, delta);
		oh->saddr = me[0];
		oh->daddr = hint[0];
	} else {
		struct ipv6hdr *oh = l3;

		if ((void *)(oh + 1) > data_end)
			return -1;
		__builtin_memcpy(hint, &g[1], 16);
		__builtin_memcpy(me, &oh->daddr, 16);
		__builtin_memcpy(peer, &oh->saddr, 16);
		if (hint[0] == me[0] && hint[1] == me[1] && hint[2] == me[2] && hint[3] == me[3])
			return -1;
		delta = csum_words_neg(peer, 4) + csum_words_neg(me, 4) + csum_words(me, 4) + csum_words(hint, 4);
		__builtin_memcpy(&oh->saddr, me, 16);
		__builtin_memcpy(&oh->daddr, hint, 16);
	}
	g[0] = new_g;
	if (uh->check) { /* the pseudo-header's addresses and the GUE word changed */
		__u16 c = fold_replace(uh->check, delta + (__u32)~old_g + new_g);

		uh->check = c ? c : 0xffff;
	}
	/* back to the neighbour that delivered it: it knows the way to the hint */
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	return 0;
}

SEC("xdp")
int xdplb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data, inner_off, stat = DS_IPIP, zero = 0;
	struct decap_state *st = bpf_map_lookup_elem(&decap_state, &zero);
	__u64 strip;
	struct ethhdr *eth = data;
	void *l3 = eth + 1, *l4;
	__u32 hint_off = 0; /* of a GUE header with xdplb's hint, 0: none */
	__u8 proto, ver;
	int local, o6 = 0, opts = 0;

	if ((void *)(eth + 1) > data_end)
		return count_decap(st, DS_PASS_NOT_TUNNEL, len, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *oh = l3;

		if ((void *)(oh + 1) > data_end)
			return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
		if (oh->ihl < 5 || (oh->frag_off & bpf_htons(0x3fff)))
			return count_decap(st, DS_PASS_NOT_TUNNEL, len, XDP_PASS);
		proto = oh->protocol;
		l4 = l3 + oh->ihl * 4;
		opts = oh->ihl != 5; /* no second chance with IP options */
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *oh = l3;

		if ((void *)(oh + 1) > data_end)
			return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
		proto = oh->nexthdr;
		l4 = oh + 1;
		o6 = 1;
	} else {
		return count_decap(st, DS_PASS_NOT_TUNNEL, len, XDP_PASS);
	}

	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		__u8 *gue = (void *)(uh + 1);

		if ((void *)(uh + 1) > data_end)
			return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
		if (uh->dest != dknobs.gue_port)
			return count_decap(st, DS_PASS_NOT_TUNNEL, len, XDP_PASS);
		if ((void *)(gue + 4) > data_end)
			return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
		stat = DS_GUE;
		if ((gue[0] >> 6) == 1) { /* variant 1: the IP header itself */
			l4 = gue;
			proto = (gue[0] >> 4) == 4 ? IPPROTO_IPIP : IPPROTO_IPV6;
		} else if ((gue[0] >> 6) == 0 && !(gue[0] & 0x20)) { /* variant 0, data */
			proto = gue[1];
			l4 = gue + 4 + (gue[0] & 0x1f) * 4;
			if ((gue[3] & GUE_F_HINT) && !opts && (gue[0] & 0x1f) == (o6 ? 4 : 1))
				hint_off = gue - (__u8 *)data;
		} else {
			return count_decap(st, DS_PASS_GUE_OTHER, len, XDP_PASS);
		}
		if (proto != IPPROTO_IPIP && proto != IPPROTO_IPV6)
			return count_decap(st, DS_PASS_GUE_OTHER, len, XDP_PASS);
	} else if (proto != IPPROTO_IPIP && proto != IPPROTO_IPV6) {
		return count_decap(st, DS_PASS_NOT_TUNNEL, len, XDP_PASS);
	}

	/* l4 is the inner IP header now */
	if (l4 + 1 > data_end)
		return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
	ver = *(__u8 *)l4 >> 4;
	if (ver != (proto == IPPROTO_IPIP ? 4 : 6))
		return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
	if (!st)
		return XDP_PASS;
	local = inner_is_local(ctx, st, l4, data_end, ver == 4);
	if (local < 0)
		return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
	if (!local)
		return count_decap(st, DS_PASS_NOT_LOCAL, len, XDP_PASS);
	if (hint_off && has_connection(ctx, l4, data_end, ver == 4) == 0 &&
	    !second_chance(ctx, hint_off, !o6))
		return count_decap(st, DS_SECOND_CHANCE, len, XDP_TX);

	/* the MACs move up to sit in front of the inner header, then the head follows */
	inner_off = l4 - data;
	if (inner_off < sizeof(*eth) + sizeof(struct iphdr) || inner_off > 256)
		return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
	strip = inner_off - sizeof(*eth);
	asm volatile("%0 &= 0xff" : "+r"(strip)); /* a bound the verifier keeps */
	{
		struct ethhdr *ne = data + strip;

		if ((void *)(ne + 1) > data_end)
			return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
		__builtin_memcpy(ne->h_dest, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(ne->h_source, eth->h_source, ETH_ALEN);
		ne->h_proto = ver == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	}
	if (bpf_xdp_adjust_head(ctx, strip))
		return count_decap(st, DS_PASS_MALFORMED, len, XDP_PASS);
	return count_decap(st, stat, len, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
