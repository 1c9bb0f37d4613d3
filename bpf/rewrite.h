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

#define XLATE_PARTIAL 1 /* finished a CHECKSUM_PARTIAL checksum */

/* Rewrite the parsed packet's tuple (pkt->key) to `to`, fixing the IPv4 header
 * and L4 checksums; with `keep`, leave the tuple and only finish a partial
 * checksum. The L4 checksum is updated incrementally unless the frame carries
 * the CHECKSUM_PARTIAL form (field == folded pseudo-header sum), which is
 * finished over the segment. Returns 0 or XLATE_PARTIAL, -1 if the packet could
 * not be rewritten (left untouched). */
__attribute__((noinline)) int xlate_packet(struct xdp_md *ctx, const struct packet *pkt,
					   const struct flow_key *to, int keep)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3_off, l4_off, l4_len;
	int v4, nw, partial = 0;
	__u16 *check, *ports;
	const struct flow_key *from;
	__u64 delta;
	__u8 *l4;

	if (!pkt || !to)
		return -1;
	from = &pkt->key;
	l3_off = pkt->l3_off;
	l4_off = pkt->l4_off;
	l4_len = pkt->l4_len;
	if (l3_off > 64 || l4_off > 512)
		return -1;
	v4 = from->family == XDPLB_AF_INET;
	nw = v4 ? 1 : 4;
	l4 = data + l4_off;
	if ((void *)(l4 + 20) > data_end && (from->proto == IPPROTO_TCP || (void *)(l4 + 8) > data_end))
		return -1;
	ports = (__u16 *)l4;
	check = 0;
	if (from->proto == IPPROTO_TCP && (void *)(l4 + 18) <= data_end)
		check = (__u16 *)(l4 + 16);
	else if (from->proto == IPPROTO_UDP && (void *)(l4 + 8) <= data_end &&
		 (!v4 || *(__u16 *)(l4 + 6)))
		check = (__u16 *)(l4 + 6); /* UDP/IPv4 without checksum stays without */

	delta = csum_words_neg(from->src, nw) + csum_words_neg(from->dst, nw) +
		csum_words(to->src, nw) + csum_words(to->dst, nw);
	if (check && knobs.csum_fixup) {
		__u16 pseudo = csum_fold64(csum_pseudo(from->src, from->dst, nw, from->proto, l4_len));

		partial = *check == pseudo;
		if (partial && l4_len > CSUM_MAX_CHUNKS * 512)
			return -1;
	}
	if (keep && !partial)
		return 0;

	if (v4) {
		struct iphdr *iph = data + l3_off;

		if ((void *)(iph + 1) > data_end)
			return -1;
		iph->check = csum_replace(iph->check, delta);
		iph->saddr = to->src[0];
		iph->daddr = to->dst[0];
	} else {
		struct ipv6hdr *ip6 = data + l3_off;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		__builtin_memcpy(&ip6->saddr, to->src, 16);
		__builtin_memcpy(&ip6->daddr, to->dst, 16);
	}
	if ((void *)(ports + 2) > data_end)
		return -1;
	ports[0] = to->sport;
	ports[1] = to->dport;
	if (!check)
		return 0;

	if (partial) {
		__s64 sum;
		__u16 res;

		*check = csum_fold64(csum_pseudo(to->src, to->dst, nw, from->proto, l4_len));
		sum = csum_frame(ctx, l4_off, l4_len);
		if (sum < 0)
			return -1;
		res = (__u16)~csum_fold64(sum);
		if (from->proto == IPPROTO_UDP && res == 0)
			res = 0xffff;
		*check = res;
		return XLATE_PARTIAL;
	}
	delta += (__u16)~from->sport + (__u16)~from->dport + to->sport + to->dport;
	*check = csum_replace(*check, delta);
	if (from->proto == IPPROTO_UDP && *check == 0)
		*check = 0xffff;
	return 0;
}

static __always_inline int xlate_count(int rc)
{
	if (rc == XLATE_PARTIAL)
		count_stat(ST_CSUM_FULL, 0);
	return rc < 0 ? -1 : 0;
}

/* Does the L4 checksum field hold the CHECKSUM_PARTIAL form? Cheap enough to
 * ask inline before paying for a call. -1: cannot tell (header too deep). */
static __always_inline int csum_partial_form(struct xdp_md *ctx, const struct packet *pkt)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = pkt->l4_off + (pkt->key.proto == IPPROTO_TCP ? 16 : 6);
	int nw = pkt->key.family == XDPLB_AF_INET ? 1 : 4;
	__u16 *check;

	if (off > 512)
		return -1;
	check = (void *)(long)ctx->data + off;
	if ((void *)(check + 1) > data_end)
		return -1;
	return *check == csum_fold64(csum_pseudo(pkt->key.src, pkt->key.dst, nw, pkt->key.proto,
						 pkt->l4_len));
}

/* IPv4 with a complete L4 checksum (the common case): inline, constant cost.
 * Returns 0, -1 on error, or 1 (nothing written) when the checksum is in the
 * CHECKSUM_PARTIAL form and must be finished by xlate_packet. */
static __always_inline int rewrite4_fast(struct xdp_md *ctx, const struct packet *pkt, __u32 src,
					 __u32 dst, __u16 sport, __u16 dport)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3_off = pkt->l3_off, l4_off = pkt->l4_off;
	struct iphdr *iph;
	__u16 *ports, *check;
	int has_check;
	__u64 delta;

	if (l3_off > 64 || l4_off > 128)
		return -1;
	iph = data + l3_off;
	ports = data + l4_off;
	if ((void *)(iph + 1) > data_end || (void *)(ports + 9) > data_end)
		return -1;
	check = pkt->key.proto == IPPROTO_TCP ? ports + 8 : ports + 3;
	has_check = pkt->key.proto == IPPROTO_TCP || *check;
	if (has_check && knobs.csum_fixup &&
	    *check == csum_fold64((__u64)pkt->key.src[0] + pkt->key.dst[0] +
				  bpf_htons((__u16)pkt->key.proto) + bpf_htons((__u16)pkt->l4_len)))
		return 1;
	delta = (__u64)(__u32)~pkt->key.src[0] + (__u32)~pkt->key.dst[0] + src + dst;
	iph->check = csum_replace(iph->check, delta);
	iph->saddr = src;
	iph->daddr = dst;
	if (has_check) {
		delta += (__u16)~pkt->key.sport + (__u16)~pkt->key.dport + sport + dport;
		*check = csum_replace(*check, delta);
		if (pkt->key.proto == IPPROTO_UDP && *check == 0)
			*check = 0xffff;
	}
	ports[0] = sport;
	ports[1] = dport;
	return 0;
}

/* Rewrite `pkt` to src:sport -> dst:dport. 0 on success. */
static __always_inline int rewrite_tuple(struct xdp_md *ctx, struct packet *pkt,
					 const __u32 *src, const __u32 *dst, __u16 sport,
					 __u16 dport)
{
	struct flow_key to;

	if (pkt->key.family == XDPLB_AF_INET && pkt->l4_len >= 18) {
		int rc = rewrite4_fast(ctx, pkt, src[0], dst[0], sport, dport);

		if (rc <= 0)
			return rc;
	}
	__builtin_memcpy(to.src, src, sizeof(to.src));
	__builtin_memcpy(to.dst, dst, sizeof(to.dst));
	to.sport = sport;
	to.dport = dport;
	return xlate_count(xlate_packet(ctx, pkt, &to, 0));
}

/* DSR keeps the tuple, but a CHECKSUM_PARTIAL frame must still be finished. */
static __always_inline int finish_csum(struct xdp_md *ctx, struct packet *pkt)
{
	int form;

	if (!knobs.csum_fixup)
		return 0;
	form = csum_partial_form(ctx, pkt);
	if (form < 0)
		return -1; /* cannot tell: to the stack, never out unfinished */
	if (!form)
		return 0;
	return xlate_count(xlate_packet(ctx, pkt, &pkt->key, 1));
}

#endif
