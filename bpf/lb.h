/* SPDX-License-Identifier: GPL-2.0 */
/* lb.h - the two directions of a balanced flow: client -> VIP (balance: the
 * flow's backend, rewrite, next hop) and backend -> SNAT port (reverse_nat). */
#ifndef XDPLB_LB_H
#define XDPLB_LB_H

#include "encap.h"
#include "flow.h"
#include "forward.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "rewrite.h"
#include "select.h"
#include "stats.h"
#include "trace.h"

/* What a client's packet goes to. */
struct flow_pick {
	__u32 backend_id;
	__u16 nat_port; /* network order; 0 unless NAT */
	__u16 pad;
	__u32 hash;     /* the flow hash (tunnels: outer UDP port, IPv6 flow label) */
};

/* The flow's backend: kept from the flow table, else chosen by Maglev (and, in
 * NAT mode, a NAT port taken). out: backend id and NAT port. Admission: a TCP
 * flow is created by a SYN (embryonic until the client's ACK confirms it); in
 * NAT mode a TCP miss goes through guard.h first (a SYN may be challenged, an
 * RST may verify a challenge, a packet without SYN of a flow just re-selected
 * is answered with an RST: its new backend never saw the handshake; other
 * misses without SYN are dropped), and a SYN that finds no way is answered
 * with an RST|ACK; in other modes a miss without SYN is forwarded by Maglev,
 * creating an (embryonic) entry within the per-CPU budget only. A SYN on a
 * closing or stale entry opens a fresh flow. Returns 0 with the stat of a drop
 * or of an answer (balance sends an answer back). */
static __always_inline struct backend *flow_backend(struct xdp_md *ctx, struct packet *pkt,
						    struct vip_info *vip, struct flow_pick *out,
						    __u32 *stat)
{
	__u32 now = flow_now(), nat = vip->mode == XDPLB_MODE_NAT;
	__u32 hash = hash_flow(&pkt->key, knobs.hash_seed);
	int tcp = pkt->key.proto == IPPROTO_TCP, syn = is_syn(pkt);
	struct flow_entry *e = 0;
	struct flow_new n = {};
	struct backend *be;
	int idx = FLOW_NONE;

	out->hash = hash;
	if (!(vip->flags & VIP_F_UDP_STATELESS) || pkt->key.proto != IPPROTO_UDP) {
		idx = flow_find(&pkt->key, hash, nat);
		e = idx == FLOW_NONE ? 0 : flow_at(idx);
	}
	if (e && syn && ((e->flags & FLOW_F_CLOSING) || flow_stale(e, now))) {
		flow_retire(e, now); /* the tuple opens a new connection */
		e = 0;
	}
	if (e) {
		be = lookup_backend(e->backend_id);
		if (be) {
			flow_touch(e, now, flow_flags_next(e, pkt, 0, nat));
			out->backend_id = e->backend_id;
			out->nat_port = nat ? nat_port_of(idx) : 0;
			*stat = ST_FWD_EST;
			return be;
		}
		if (vip->flags & VIP_F_RESET_REMOVED) {
			*stat = ST_DROP_REMOVED;
			return 0;
		}
		count_stat(ST_RESELECT, 0);
	}

	out->backend_id = select_backend(vip, hash);
	be = lookup_backend(out->backend_id);
	if (!be) {
		*stat = ST_DROP_NO_BACKEND;
		return 0;
	}
	*stat = ST_FWD_NEW;
	out->nat_port = 0;
	if (e && !nat) { /* re-selected: the entry stays, with its new backend */
		e->backend_id = out->backend_id;
		flow_touch(e, now, flow_flags_next(e, pkt, 0, nat));
		return be;
	}
	if (e)
		flow_retire(e, now); /* NAT: its reply tuple changes, so must its way */
	if ((vip->flags & VIP_F_UDP_STATELESS) && pkt->key.proto == IPPROTO_UDP)
		return be;
	if (tcp && nat) { /* guard.h: challenged, verified, answered, or admitted (a SYN) */
		*stat = nat_tcp_miss(ctx, pkt, e ? ANSWER_RETIRED : ANSWER_MISS);
		if (*stat != ST_FWD_NEW)
			return 0;
	} else if (tcp && !syn) {
		if (!nonsyn_admit(now)) {
			count_stat(ST_NONSYN_STATELESS, 0);
			return be;
		}
	}
	__builtin_memcpy(&n.e, &pkt->key, __builtin_offsetof(struct flow_key, pad));
	n.e.flags = tcp ? FLOW_F_EMBRYONIC : 0;
	n.e.backend_id = out->backend_id;
	n.hash = hash;
	n.now = now;
	if (!nat) {
		ct_claim(&n);
		return be;
	}
	n.e.reply_tag = reply_tag(be->addr, be->port ? be->port : pkt->key.dport, vip->snat_addr,
				  pkt->key.proto, knobs.hash_seed);
	n.e.client_ifindex = pkt->ifindex;
	{
		struct ethhdr *eth = (void *)(long)ctx->data;

		if ((void *)(eth + 1) <= (void *)(long)ctx->data_end)
			__builtin_memcpy(n.e.client_mac, eth->h_source, ETH_ALEN);
	}
	idx = nat_claim(&n);
	if (idx == FLOW_NONE) {
		*stat = tcp ? nat_tcp_miss(ctx, pkt, ANSWER_FULL) : ST_DROP_NAT_FULL;
		return 0;
	}
	out->nat_port = nat_port_of(idx);
	return be;
}

/* Client -> VIP. */
static __always_inline int balance(struct xdp_md *ctx, struct packet *pkt, struct vip_info *vip)
{
	struct flow_pick fs = {};
	__u32 stat, vip_id = vip->vip_id;
	struct backend *be = flow_backend(ctx, pkt, vip, &fs, &stat);
	const __u32 *dst = pkt->key.dst;
	__u16 dport = pkt->key.dport;
	int action;

	if (!be) { /* dropped, or answered by guard.h (the frame is the answer) */
		action = stat >= ST_SYN_CHALLENGE && stat <= ST_RST_NAT_FULL ? XDP_TX : XDP_DROP;
		count_obj(&vip_stats, vip_id, pkt->frame_len, 0);
		trace_decision(pkt, pkt->key.dst, dport, vip_id, XDPLB_NO_BACKEND, action, stat);
		return verdict(pkt, stat, action);
	}
	if (vip->mode == XDPLB_MODE_NAT) {
		/* the backend entry's SNAT address: the VIP's, or, for a flow synced from
		 * another node, that node's (a backend entry made for it by the sync) */
		dst = be->addr;
		dport = be->port ? be->port : pkt->key.dport;
		if (rewrite_tuple(ctx, pkt, be->snat_addr, dst, fs.nat_port, dport))
			return verdict(pkt, ST_PASS_TOO_LONG, XDP_PASS);
	} else if (finish_csum(ctx, pkt)) {
		/* DSR keeps the tuple, but a CHECKSUM_PARTIAL frame must still be finished */
		return verdict(pkt, ST_PASS_TOO_LONG, XDP_PASS);
	}
	if (is_tunnel(vip)) /* the entry encapsulates (encap.h: TUNNEL_REQ) */
		return tunnel_request(pkt, vip, be, fs.backend_id, fs.hash, stat);
	if (be->flags & BE_F_MAC)
		action = xmit_mac(ctx, be->mac, be->flags & BE_F_REDIRECT ? be->ifindex : 0, &stat);
	else
		action = fib_forward(ctx, pkt, vip->mode == XDPLB_MODE_NAT ? be->snat_addr :
					       pkt->key.src, dst,
				     vip->mode == XDPLB_MODE_NAT ? fs.nat_port : pkt->key.sport,
				     dport, &stat);
	count_obj(&be_stats, fs.backend_id, pkt->frame_len, stat == ST_FWD_NEW);
	trace_decision(pkt, dst, dport, vip_id, fs.backend_id, action, stat);
	return verdict(pkt, stat, action);
}

/* Backend -> snat:port, a reply on the NAT flow at `idx`: back to the client. */
static __always_inline int reverse_nat(struct xdp_md *ctx, struct packet *pkt, __u32 idx)
{
	struct flow_entry *e = flow_at(idx);
	__u32 stat = ST_REPLY, client[4], vip[4], be_id;
	__u16 cport, vport;
	struct backend *be;
	int action;
	__u8 flags;

	if (!e)
		return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
	flags = flow_flags_next(e, pkt, 1, 1);
	if ((flags & ~e->flags) & FLOW_F_SYNACK)
		e->ack_check = (__u16)(pkt->tcp_seq + 1); /* before the flag that vouches for it */
	flow_touch(e, flow_now(), flags);
	__builtin_memcpy(client, e->src, sizeof(client));
	__builtin_memcpy(vip, e->dst, sizeof(vip));
	cport = e->sport;
	vport = e->dport;
	be_id = e->backend_id;
	if (rewrite_tuple(ctx, pkt, vip, client, vport, cport))
		return verdict(pkt, ST_PASS_TOO_LONG, XDP_PASS);
	action = xmit_mac(ctx, e->client_mac, e->client_ifindex, &stat);
	count_obj(&be_stats, be_id, pkt->frame_len, 0);
	if (runtime.trace_rate) { /* the VIP id is the backend's */
		be = bpf_map_lookup_elem(&backends, &be_id);
		trace_decision(pkt, client, cport, be ? be->vip_id : 0, be_id, action, stat);
	}
	return verdict(pkt, stat, action);
}

/* Could this be a backend's reply to a NAT port? (VIP ports inside the NAT range
 * pay one more probe; NAT ports are never VIP ports.) */
static __always_inline int is_nat_reply(const struct packet *pkt)
{
	__u16 port = bpf_ntohs(pkt->key.dport);

	return runtime.nat_vips && port >= knobs.nat_port_min && port <= knobs.nat_port_max;
}

#endif
