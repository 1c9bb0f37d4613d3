/* SPDX-License-Identifier: GPL-2.0 */
/* flow.h - connection tracking and NAT port allocation.
 *
 * conntrack: client 5-tuple -> backend (+ NAT port). LRU: when full, the least
 * recently used flow is evicted; a later packet of it is re-selected by the same
 * hash, so with an unchanged backend set it lands on the same backend and, in
 * NAT mode, on the same port (ports are chosen deterministically from the hash).
 * nat_rev: reply 5-tuple (backend -> snat:port) -> client. A port is taken when
 * its entry is free, stale (idle beyond its timeout) or already this flow's. */
#ifndef XDPLB_FLOW_H
#define XDPLB_FLOW_H

#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "select.h"

#define NAT_TRIES 8 /* hash-derived candidate ports per new flow (and as many random) */

static __always_inline __u64 flow_timeout(__u8 proto, __u8 flags)
{
	if (flags & FLOW_F_CLOSING)
		return runtime.closing_timeout;
	return proto == IPPROTO_TCP ? runtime.tcp_timeout : runtime.udp_timeout;
}

static __always_inline __u8 closing_flag(const struct packet *pkt)
{
	return (pkt->tcp_flags & (TCPF_FIN | TCPF_RST)) ? FLOW_F_CLOSING : 0;
}

/* Does this reverse entry belong to the client flow `k`? */
static __always_inline int nat_owned_by(const struct nat_state *ns, const struct flow_key *k)
{
	return ns->client_port == k->sport && ns->vip_port == k->dport &&
	       ns->client[0] == k->src[0] && ns->client[1] == k->src[1] &&
	       ns->client[2] == k->src[2] && ns->client[3] == k->src[3] &&
	       ns->vip[0] == k->dst[0] && ns->vip[1] == k->dst[1] &&
	       ns->vip[2] == k->dst[2] && ns->vip[3] == k->dst[3];
}

/* Reply-direction key for a NAT flow to `be` from snat:nat_port. */
static __always_inline void nat_key(struct flow_key *rk, const struct packet *pkt,
				    const struct vip_info *vip, const struct backend *be,
				    __u16 nat_port)
{
	__builtin_memcpy(rk->src, be->addr, sizeof(rk->src));
	__builtin_memcpy(rk->dst, vip->snat_addr, sizeof(rk->dst));
	rk->sport = be->port ? be->port : pkt->key.dport;
	rk->dport = nat_port;
	rk->proto = pkt->key.proto;
	rk->family = pkt->key.family;
	rk->pad = 0;
}

/* A NAT port request: the reply key (dport filled per candidate) and the
 * reverse entry to publish. */
struct nat_req {
	struct flow_key rk;
	struct nat_state ns;
	__u32 hash;
	__u32 pad;
	__u64 now;
};

static __always_inline int nat_same_client(const struct nat_state *a, const struct nat_state *b)
{
	return a->client_port == b->client_port && a->vip_port == b->vip_port &&
	       a->client[0] == b->client[0] && a->client[1] == b->client[1] &&
	       a->client[2] == b->client[2] && a->client[3] == b->client[3] &&
	       a->vip[0] == b->vip[0] && a->vip[1] == b->vip[1] && a->vip[2] == b->vip[2] &&
	       a->vip[3] == b->vip[3];
}

/* Pick a NAT port for a new flow and publish its reverse entry. Candidates are
 * derived from the flow hash, so a flow that lost its conntrack entry gets the
 * same port again. Returns the port (network order), 0 when all are busy.
 * A global function: verified once, its loop does not multiply the caller's
 * states. */
__attribute__((noinline)) int alloc_nat_port(struct nat_req *r)
{
	__u32 range, i;

	if (!r)
		return 0;
	range = (__u32)knobs.nat_port_max - knobs.nat_port_min + 1;
	for (i = 0; i < 2 * NAT_TRIES; i++) {
		/* hash-derived candidates first (a flow that lost its conntrack entry gets
		 * its port back), then random ones (a retransmitted SYN does not retry the
		 * same busy ports) */
		__u32 pick = i < NAT_TRIES ? r->hash + i * H_P1 : bpf_get_prandom_u32();
		__u16 host_port = knobs.nat_port_min + pick % range;
		__u16 port = bpf_htons(host_port);
		struct nat_state *cur;

		if (test_bit(runtime.port_bits, host_port))
			continue; /* a VIP port: replies to it would look like new flows */
		r->rk.dport = port;
		if (!bpf_map_update_elem(&nat_rev, &r->rk, &r->ns, BPF_NOEXIST))
			return port;
		cur = bpf_map_lookup_elem(&nat_rev, &r->rk);
		if (cur && !nat_same_client(cur, &r->ns) &&
		    r->now - cur->last_seen <= flow_timeout(r->rk.proto, cur->flags))
			continue; /* live flow of another client */
		if (!bpf_map_update_elem(&nat_rev, &r->rk, &r->ns, BPF_ANY))
			return port;
	}
	return 0;
}

/* Prepare the NAT request of a new flow of `pkt` to backend `be`. */
static __always_inline void nat_request(struct xdp_md *ctx, struct nat_req *r,
					const struct packet *pkt,
					const struct vip_info *vip, __u32 be_id,
					const struct backend *be, __u32 hash, __u64 now)
{
	nat_key(&r->rk, pkt, vip, be, 0);
	__builtin_memcpy(r->ns.client, pkt->key.src, sizeof(r->ns.client));
	__builtin_memcpy(r->ns.vip, pkt->key.dst, sizeof(r->ns.vip));
	r->ns.client_port = pkt->key.sport;
	r->ns.vip_port = pkt->key.dport;
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) <= (void *)(long)ctx->data_end)
		__builtin_memcpy(r->ns.client_mac, eth->h_source, ETH_ALEN);
	r->ns.vip_id = vip->vip_id;
	r->ns.backend_id = be_id;
	r->ns.client_ifindex = pkt->ifindex;
	r->ns.flags = closing_flag(pkt);
	r->ns.last_seen = now;
	r->hash = hash;
	r->now = now;
}

/* Keep a live NAT flow's reverse entry fresh and make sure it is still ours
 * (it may have been evicted, or reclaimed after an idle timeout). Returns 0 if
 * the flow must be re-established. Runs at most once a second per flow. */
static __always_inline int refresh_nat(const struct packet *pkt, const struct vip_info *vip,
				       struct flow_state *fs, const struct backend *be, __u64 now,
				       __u8 flags)
{
	struct nat_state *cur;
	struct flow_key rk;

	nat_key(&rk, pkt, vip, be, fs->nat_port);
	cur = bpf_map_lookup_elem(&nat_rev, &rk);
	if (!cur || !nat_owned_by(cur, &pkt->key))
		return 0;
	cur->last_seen = now;
	cur->flags = flags;
	return 1;
}

#endif
