/* SPDX-License-Identifier: GPL-2.0 */
/* rewrite.h - address/port rewrite with checksum fix-up (IPv4 and IPv6).
 * A global function, so the verifier checks it once rather than at each of
 * its call sites (the forward and the reply path). */
#ifndef XDPLB_REWRITE_H
#define XDPLB_REWRITE_H

#include "csum.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

/* A rewrite of a parsed packet: offsets from the frame start, and the old and
 * new (src:sport -> dst:dport), network order. */
struct xlate {
	__u32 l3_off;
	__u32 l4_off;
	__u32 l4_len;
	__u8 family;
	__u8 proto;
	__u16 pad;
	struct flow_key from;
	struct flow_key to;
};

#define XLATE_PARTIAL 1 /* finished a CHECKSUM_PARTIAL checksum */

/* Fix the IPv4 header and L4 checksums for x->from -> x->to and write the new
 * tuple. The L4 checksum is updated incrementally unless the frame carries the
 * CHECKSUM_PARTIAL form (field == folded pseudo-header sum), which is finished
 * over the segment. Returns 0 or XLATE_PARTIAL, -1 if the packet could not be
 * rewritten (left untouched). */
__attribute__((noinline)) int xlate_packet(struct xdp_md *ctx, struct xlate *x)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3_off, l4_off, l4_len;
	int v4, nw, partial = 0;
	__u16 *check, *ports;
	__u64 delta;
	__u8 *l4;

	if (!x)
		return -1;
	l3_off = x->l3_off;
	l4_off = x->l4_off;
	l4_len = x->l4_len;
	if (l3_off > 64 || l4_off > 512)
		return -1;
	v4 = x->family == XDPLB_AF_INET;
	nw = v4 ? 1 : 4;
	l4 = data + l4_off;
	if ((void *)(l4 + 20) > data_end && (x->proto == IPPROTO_TCP || (void *)(l4 + 8) > data_end))
		return -1;
	ports = (__u16 *)l4;
	check = 0;
	if (x->proto == IPPROTO_TCP && (void *)(l4 + 18) <= data_end)
		check = (__u16 *)(l4 + 16);
	else if (x->proto == IPPROTO_UDP && (void *)(l4 + 8) <= data_end &&
		 (!v4 || *(__u16 *)(l4 + 6)))
		check = (__u16 *)(l4 + 6); /* UDP/IPv4 without checksum stays without */

	delta = csum_words_neg(x->from.src, nw) + csum_words_neg(x->from.dst, nw) +
		csum_words(x->to.src, nw) + csum_words(x->to.dst, nw);
	if (check && knobs.csum_fixup) {
		__u16 pseudo = csum_fold64(csum_pseudo(x->from.src, x->from.dst, nw, x->proto, l4_len));

		partial = *check == pseudo;
		if (partial && l4_len > CSUM_MAX_CHUNKS * 512)
			return -1;
	}

	if (v4) {
		struct iphdr *iph = data + l3_off;

		if ((void *)(iph + 1) > data_end)
			return -1;
		iph->check = csum_replace(iph->check, delta);
		iph->saddr = x->to.src[0];
		iph->daddr = x->to.dst[0];
	} else {
		struct ipv6hdr *ip6 = data + l3_off;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		__builtin_memcpy(&ip6->saddr, x->to.src, 16);
		__builtin_memcpy(&ip6->daddr, x->to.dst, 16);
	}
	if ((void *)(ports + 2) > data_end)
		return -1;
	ports[0] = x->to.sport;
	ports[1] = x->to.dport;
	if (!check)
		return 0;

	if (partial) {
		__s64 sum;
		__u16 res;

		*check = csum_fold64(csum_pseudo(x->to.src, x->to.dst, nw, x->proto, l4_len));
		sum = csum_frame(ctx, l4_off, l4_len);
		if (sum < 0)
			return -1;
		res = (__u16)~csum_fold64(sum);
		if (x->proto == IPPROTO_UDP && res == 0)
			res = 0xffff;
		*check = res;
		return XLATE_PARTIAL;
	}
	delta += (__u16)~x->from.sport + (__u16)~x->from.dport + x->to.sport + x->to.dport;
	*check = csum_replace(*check, delta);
	if (x->proto == IPPROTO_UDP && *check == 0)
		*check = 0xffff;
	return 0;
}

/* Rewrite `pkt` to src:sport -> dst:dport. 0 on success. */
static __always_inline int rewrite_tuple(struct xdp_md *ctx, struct packet *pkt,
					 const __u32 *src, const __u32 *dst, __u16 sport,
					 __u16 dport)
{
	struct xlate x = {};
	int rc;

	x.l3_off = pkt->l3_off;
	x.l4_off = pkt->l4_off;
	x.l4_len = pkt->l4_len;
	x.family = pkt->key.family;
	x.proto = pkt->key.proto;
	x.from = pkt->key;
	__builtin_memcpy(x.to.src, src, 16);
	__builtin_memcpy(x.to.dst, dst, 16);
	x.to.sport = sport;
	x.to.dport = dport;
	rc = xlate_packet(ctx, &x);
	if (rc == XLATE_PARTIAL)
		count_stat(ST_CSUM_FULL, 0);
	return rc < 0 ? -1 : 0;
}

#endif
