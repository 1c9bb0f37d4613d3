/* SPDX-License-Identifier: GPL-2.0 */
/* lb.h - the two directions of a balanced flow: client -> VIP (balance: the
 * flow's backend, rewrite, next hop) and backend -> SNAT port (reverse_nat). */
#ifndef XDPLB_LB_H
#define XDPLB_LB_H

#include "flow.h"
#include "forward.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "rewrite.h"
#include "select.h"
#include "stats.h"
#include "trace.h"

/* The flow's backend: kept from conntrack, else chosen by Maglev. */
static __always_inline struct backend *flow_backend(struct xdp_md *ctx, struct packet *pkt, struct vip_info *vip,
						    struct flow_state *out, __u32 *stat)
{
	__u64 now = bpf_jiffies64();
	__u8 closing = closing_flag(pkt);
	struct flow_state *fs = 0;
	struct backend *be;
	__u32 hash;

	if (!(vip->flags & VIP_F_UDP_STATELESS) || pkt->key.proto != IPPROTO_UDP)
		fs = bpf_map_lookup_elem(&conntrack, &pkt->key);
	if (fs) {
		be = lookup_backend(fs->backend_id);
		if (!be && (vip->flags & VIP_F_RESET_REMOVED)) {
			*stat = ST_DROP_REMOVED;
			return 0;
		}
		if (!be) {
			count_stat(ST_RESELECT, 0);
		} else if (now - fs->last_seen < runtime.refresh && (fs->flags | closing) == fs->flags) {
			*out = *fs;
			*stat = ST_FWD_EST;
			return be;
		} else if (vip->mode != XDPLB_MODE_NAT ||
			   refresh_nat(pkt, vip, fs, be, now, fs->flags | closing)) {
			fs->last_seen = now;
			fs->flags |= closing;
			*out = *fs;
			*stat = ST_FWD_EST;
			return be;
		}
	}

	hash = hash_flow(&pkt->key, knobs.hash_seed);
	out->backend_id = select_backend(vip, hash);
	be = lookup_backend(out->backend_id);
	if (!be) {
		*stat = ST_DROP_NO_BACKEND;
		return 0;
	}
	out->nat_port = 0;
	if (vip->mode == XDPLB_MODE_NAT) {
		struct nat_req req = {};

		nat_request(ctx, &req, pkt, vip, out->backend_id, be, hash, now);
		out->nat_port = alloc_nat_port(&req);
		if (!out->nat_port) {
			*stat = ST_DROP_NAT_FULL;
			return 0;
		}
	}
	out->flags = closing;
	out->last_seen = now;
	*stat = ST_FWD_NEW;
	if (!(vip->flags & VIP_F_UDP_STATELESS) || pkt->key.proto != IPPROTO_UDP)
		if (bpf_map_update_elem(&conntrack, &pkt->key, out, BPF_ANY))
			count_stat(ST_CT_FULL, 0);
	return be;
}

/* Client -> VIP. */
static __always_inline int balance(struct xdp_md *ctx, struct packet *pkt, struct vip_info *vip)
{
	struct flow_state fs = {};
	__u32 stat, vip_id = vip->vip_id;
	struct backend *be = flow_backend(ctx, pkt, vip, &fs, &stat);
	const __u32 *dst = pkt->key.dst;
	__u16 dport = pkt->key.dport;
	int action;

	if (!be) {
		count_obj(&vip_stats, vip_id, pkt->frame_len, 0);
		trace_decision(pkt, pkt->key.dst, dport, vip_id, XDPLB_NO_BACKEND, XDP_DROP, stat);
		return verdict(pkt, stat, XDP_DROP);
	}
	if (vip->mode == XDPLB_MODE_NAT) {
		dst = be->addr;
		dport = be->port ? be->port : pkt->key.dport;
		if (rewrite_tuple(ctx, pkt, vip->snat_addr, dst, fs.nat_port, dport))
			return verdict(pkt, ST_PASS_TOO_LONG, XDP_PASS);
	} else if (finish_csum(ctx, pkt)) {
		/* DSR keeps the tuple, but a CHECKSUM_PARTIAL frame must still be finished */
		return verdict(pkt, ST_PASS_TOO_LONG, XDP_PASS);
	}
	if (be->flags & BE_F_MAC)
		action = xmit_mac(ctx, be->mac, be->flags & BE_F_REDIRECT ? be->ifindex : 0, &stat);
	else
		action = fib_forward(ctx, pkt, vip->mode == XDPLB_MODE_NAT ? vip->snat_addr :
					       pkt->key.src, dst,
				     vip->mode == XDPLB_MODE_NAT ? fs.nat_port : pkt->key.sport,
				     dport, &stat);
	count_obj(&be_stats, fs.backend_id, pkt->frame_len, stat == ST_FWD_NEW);
	trace_decision(pkt, dst, dport, vip_id, fs.backend_id, action, stat);
	return verdict(pkt, stat, action);
}

/* Backend -> snat:port, a reply on a NAT flow: translate back to the client. */
static __always_inline int reverse_nat(struct xdp_md *ctx, struct packet *pkt,
				       struct nat_state *ns)
{
	__u32 stat = ST_REPLY, client[4], vip[4];
	__u8 closing = closing_flag(pkt);
	__u16 cport, vport;
	int action;
	__u64 now;

	now = bpf_jiffies64();
	if (now - ns->last_seen >= runtime.refresh || (ns->flags | closing) != ns->flags) {
		ns->last_seen = now;
		ns->flags |= closing;
	}
	__builtin_memcpy(client, ns->client, sizeof(client));
	__builtin_memcpy(vip, ns->vip, sizeof(vip));
	cport = ns->client_port;
	vport = ns->vip_port;
	if (rewrite_tuple(ctx, pkt, vip, client, vport, cport))
		return verdict(pkt, ST_PASS_TOO_LONG, XDP_PASS);
	action = xmit_mac(ctx, ns->client_mac, ns->client_ifindex, &stat);
	count_obj(&be_stats, ns->backend_id, pkt->frame_len, 0);
	trace_decision(pkt, client, cport, ns->vip_id, ns->backend_id, action, stat);
	return verdict(pkt, stat, action);
}

/* Could this be a backend's reply to a NAT port? (VIP ports inside the NAT range
 * pay one more lookup; new NAT ports are never VIP ports.) */
static __always_inline int is_nat_reply(const struct packet *pkt)
{
	__u16 port = bpf_ntohs(pkt->key.dport);

	return runtime.nat_vips && port >= knobs.nat_port_min && port <= knobs.nat_port_max;
}

#endif
