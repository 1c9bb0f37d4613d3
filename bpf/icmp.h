/* SPDX-License-Identifier: GPL-2.0 */
/* icmp.h - ICMP/ICMPv6 errors about balanced flows ("fragmentation needed",
 * "packet too big", unreachables, time exceeded). The embedded header names the
 * flow: an error sent to a VIP goes to the backend that owns the flow, an error
 * a backend sends about a NAT flow goes back to the client, both translated
 * like the flow's packets. Inner L4 checksums are left alone (receivers do not
 * check them); the inner IPv4 header and the ICMP checksums are kept exact. */
#ifndef XDPLB_ICMP_H
#define XDPLB_ICMP_H

#include "csum.h"
#include "flow.h"
#include "forward.h"
#include "maps.h"
#include "parse.h"
#include "select.h"
#include "stats.h"

#define ICMP_ERR_MAX_OFF 256 /* the ICMP header starts before this offset */

struct icmp_err {
	struct flow_key inner; /* the embedded packet's tuple, as embedded */
	__u32 inner_l3_off;
	__u32 inner_l4_off;
};

static __always_inline int is_icmp_error(__u8 family, __u8 type)
{
	if (family == XDPLB_AF_INET)
		return type == 3 || type == 11 || type == 12; /* unreach, time exc., param */
	return type >= 1 && type <= 4;                     /* unreach, too big, time, param */
}

/* Parse the header embedded in an ICMP error; 0 when it is TCP/UDP. */
static __always_inline int parse_icmp_error(struct xdp_md *ctx, const struct packet *pkt,
					    struct icmp_err *e)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = pkt->l4_off;
	__u8 *icmp;

	if (off > ICMP_ERR_MAX_OFF)
		return -1;
	icmp = data + off;
	if ((void *)(icmp + 8) > data_end || !is_icmp_error(pkt->key.family, icmp[0]))
		return -1;
	off += 8;
	e->inner_l3_off = off;
	e->inner.family = pkt->key.family;
	if (pkt->key.family == XDPLB_AF_INET) {
		struct iphdr *ih = data + off;
		__u32 ihl;

		if ((void *)(ih + 1) > data_end)
			return -1;
		ihl = ih->ihl * 4;
		if (ihl < sizeof(*ih) || ihl > 60)
			return -1;
		e->inner.proto = ih->protocol;
		e->inner.src[0] = ih->saddr;
		e->inner.dst[0] = ih->daddr;
		off += ihl;
	} else {
		struct ipv6hdr *ih = data + off;

		if ((void *)(ih + 1) > data_end)
			return -1;
		e->inner.proto = ih->nexthdr;
		__builtin_memcpy(e->inner.src, &ih->saddr, 16);
		__builtin_memcpy(e->inner.dst, &ih->daddr, 16);
		off += sizeof(*ih);
	}
	if (e->inner.proto != IPPROTO_TCP && e->inner.proto != IPPROTO_UDP)
		return -1;
	if (off > ICMP_ERR_MAX_OFF + 8 + 60)
		return -1;
	e->inner_l4_off = off;
	{
		__u16 *ports = data + off;

		if ((void *)(ports + 2) > data_end)
			return -1;
		e->inner.sport = ports[0];
		e->inner.dport = ports[1];
	}
	return 0;
}

/* The flow an embedded header belongs to, seen from its sender's peer. */
static __always_inline void reverse_tuple(struct flow_key *out, const struct flow_key *in)
{
	__builtin_memcpy(out->src, in->dst, sizeof(out->src));
	__builtin_memcpy(out->dst, in->src, sizeof(out->dst));
	out->sport = in->dport;
	out->dport = in->sport;
	out->proto = in->proto;
	out->family = in->family;
	out->pad = 0;
}

/* Rewrite the outer addresses to osrc -> odst and the embedded tuple to `in`,
 * keeping the outer IPv4, inner IPv4 and ICMP checksums exact. */
static __always_inline int icmp_xlate(struct xdp_md *ctx, const struct packet *pkt,
				      const struct icmp_err *e, const __u32 *osrc,
				      const __u32 *odst, const struct flow_key *in)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int nw = pkt->key.family == XDPLB_AF_INET ? 1 : 4;
	__u32 l3_off = pkt->l3_off, l4_off = pkt->l4_off;
	__u32 il3 = e->inner_l3_off, il4 = e->inner_l4_off;
	__u64 d_out, d_in, d_icmp;
	__u16 *icmp_check, *iports;

	if (l3_off > 64 || l4_off > ICMP_ERR_MAX_OFF || il3 > ICMP_ERR_MAX_OFF + 8 ||
	    il4 > ICMP_ERR_MAX_OFF + 8 + 60)
		return -1;
	icmp_check = data + l4_off + 2;
	iports = data + il4;
	if ((void *)(icmp_check + 1) > data_end || (void *)(iports + 2) > data_end)
		return -1;

	d_out = csum_words_neg(pkt->key.src, nw) + csum_words_neg(pkt->key.dst, nw) +
		csum_words(osrc, nw) + csum_words(odst, nw);
	d_in = csum_words_neg(e->inner.src, nw) + csum_words_neg(e->inner.dst, nw) +
	       csum_words(in->src, nw) + csum_words(in->dst, nw);
	d_icmp = d_in + (__u16)~e->inner.sport + (__u16)~e->inner.dport + in->sport + in->dport;

	if (nw == 1) {
		struct iphdr *oh = data + l3_off, *ih = data + il3;
		__u16 old;

		if ((void *)(oh + 1) > data_end || (void *)(ih + 1) > data_end)
			return -1;
		oh->check = csum_replace(oh->check, d_out);
		oh->saddr = osrc[0];
		oh->daddr = odst[0];
		old = ih->check;
		ih->check = csum_replace(old, d_in);
		d_icmp += (__u16)~old + ih->check;
		ih->saddr = in->src[0];
		ih->daddr = in->dst[0];
	} else {
		struct ipv6hdr *oh = data + l3_off, *ih = data + il3;

		if ((void *)(oh + 1) > data_end || (void *)(ih + 1) > data_end)
			return -1;
		d_icmp += d_out; /* ICMPv6 covers the outer pseudo-header */
		__builtin_memcpy(&oh->saddr, osrc, 16);
		__builtin_memcpy(&oh->daddr, odst, 16);
		__builtin_memcpy(&ih->saddr, in->src, 16);
		__builtin_memcpy(&ih->daddr, in->dst, 16);
	}
	iports[0] = in->sport;
	iports[1] = in->dport;
	*icmp_check = csum_replace(*icmp_check, d_icmp);
	return 0;
}

/* An ICMP error sent to a VIP about a client's flow: to the flow's backend. */
static __always_inline int icmp_to_backend(struct xdp_md *ctx, struct packet *pkt,
					   const struct icmp_err *e, const struct flow_key *fk,
					   const struct vip_info *vip, __u32 idx)
{
	struct flow_entry *f = flow_at(idx);
	struct backend *be = f ? lookup_backend(f->backend_id) : 0;
	__u32 stat = ST_ICMP_FWD;
	int action;

	/* tunnel modes: the error stays with the LB's host (not encapsulated) */
	if (!be || vip->mode == XDPLB_MODE_IPIP || vip->mode == XDPLB_MODE_GUE)
		return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
	if (vip->mode == XDPLB_MODE_NAT) {
		/* the embedded packet as the backend sent it: backend -> snat:port */
		struct flow_key in = {};

		__builtin_memcpy(in.src, be->addr, sizeof(in.src));
		__builtin_memcpy(in.dst, vip->snat_addr, sizeof(in.dst));
		in.sport = be->port ? be->port : fk->dport;
		in.dport = nat_port_of(idx);
		if (icmp_xlate(ctx, pkt, e, pkt->key.src, be->addr, &in))
			return verdict(pkt, ST_PASS_MALFORMED, XDP_PASS);
	}
	if (be->flags & BE_F_MAC)
		action = xmit_mac(ctx, be->mac, be->flags & BE_F_REDIRECT ? be->ifindex : 0, &stat);
	else
		action = fib_forward(ctx, pkt, pkt->key.src, be->addr, 0, 0, &stat);
	return verdict(pkt, stat, action);
}

/* An ICMP error a backend sent about a NAT flow: back to the client. */
static __always_inline int icmp_to_client(struct xdp_md *ctx, struct packet *pkt,
					  const struct icmp_err *e, __u32 idx)
{
	struct flow_key in = {}; /* the embedded packet as the client sent it */
	struct flow_entry *f = flow_at(idx);
	__u32 stat = ST_ICMP_REPLY, client[4], vip[4];
	int action;

	if (!f)
		return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
	__builtin_memcpy(client, f->src, sizeof(client));
	__builtin_memcpy(vip, f->dst, sizeof(vip));
	__builtin_memcpy(in.src, client, sizeof(in.src));
	__builtin_memcpy(in.dst, vip, sizeof(in.dst));
	in.sport = f->sport;
	in.dport = f->dport;
	if (icmp_xlate(ctx, pkt, e, vip, client, &in))
		return verdict(pkt, ST_PASS_MALFORMED, XDP_PASS);
	action = xmit_mac(ctx, f->client_mac, f->client_ifindex, &stat);
	return verdict(pkt, stat, action);
}

/* ICMP to one of our addresses: an error about a balanced flow is sent on
 * to whoever owns that flow; anything else is the host's. A global function. */
__attribute__((noinline)) int process_icmp(struct xdp_md *ctx, struct packet *pkt)
{
	struct icmp_err e = {};
	struct vip_info *vip;
	struct flow_key fk;
	int idx;

	if (!pkt)
		return XDP_PASS;
	/* the error must be addressed to whoever sent the embedded packet: the VIP
	 * (its reply to a client) or the SNAT address (its packet to a backend) */
	if (parse_icmp_error(ctx, pkt, &e) || pkt->key.dst[0] != e.inner.src[0] ||
	    pkt->key.dst[1] != e.inner.src[1] || pkt->key.dst[2] != e.inner.src[2] ||
	    pkt->key.dst[3] != e.inner.src[3])
		return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
	reverse_tuple(&fk, &e.inner);
	vip = lookup_vip(&fk);
	if (vip) {
		idx = flow_find(&fk, hash_flow(&fk, knobs.hash_seed), vip->mode == XDPLB_MODE_NAT);
		if (idx != FLOW_NONE)
			return icmp_to_backend(ctx, pkt, &e, &fk, vip, idx);
	}
	idx = nat_reply_find(&fk);
	if (idx != FLOW_NONE)
		return icmp_to_client(ctx, pkt, &e, idx);
	return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
}

#endif
