/* SPDX-License-Identifier: GPL-2.0 */
/* flow.h - the flow table: connection tracking and NAT in one array.
 *
 * `flows` is set-associative: sets of FLOW_WAYS 64-byte entries, in two regions.
 *  - NAT region, first: set s is NAT port nat_port_min + s. A NAT flow lives in
 *    the set of its port, so a backend's reply (to snat:port) is found with one
 *    array index and the client's packets through the flow hash: set
 *    hash % nat_sets, or one of the NAT_PROBES - 1 sets after it, each looked
 *    at only when the one before was spilled from (it had no way for a flow:
 *    full, its port a VIP port, or a live flow there with the same reply
 *    tuple). A port serves up to FLOW_WAYS flows at once, whose replies differ
 *    (backend, backend port or SNAT address: reply_tag).
 *  - conntrack region (other modes): set hash & (ct_sets - 1).
 * Ways fill in order and are never emptied (user space may clear the whole
 * table), so a scan stops at the first never-used way (family and last_seen 0;
 * a way another CPU is publishing has last_seen set and family still 0: it is
 * skipped, neither free nor a match). An entry idle beyond
 * its timeout is stale: its flow still finds it, until a new flow reuses the
 * way. A conntrack set with no free or stale way evicts a live flow (way by
 * hash, counted ST_CT_FULL): its next packet is re-selected by Maglev, so it
 * keeps its backend unless the backends changed. A NAT flow that finds no way
 * in any of its sets is dropped (ST_DROP_NAT_FULL). Ways are taken with a
 * compare-and-swap on last_seen: two CPUs never take the same way.
 * src/xdplb/model.py mirrors every rule here. */
#ifndef XDPLB_FLOW_H
#define XDPLB_FLOW_H

#include "guard.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "select.h"
#include "stats.h"

#define FLOW_NONE (-1)
#define NAT_PROBES 16 /* sets a NAT flow may live in: its own and the next ones */

static __always_inline __u64 flow_timeout(__u8 proto, __u8 flags)
{
	if (flags & FLOW_F_EMBRYONIC)
		return runtime.syn_timeout;
	if (flags & FLOW_F_CLOSING)
		return runtime.closing_timeout;
	return proto == IPPROTO_TCP ? runtime.tcp_timeout : runtime.udp_timeout;
}

/* A SYN that may open a connection: SYN without ACK or RST. */
static __always_inline int is_syn(const struct packet *pkt)
{
	return (pkt->tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST)) == TCPF_SYN;
}

/* The flags of entry `e` after `pkt` of its flow (`reply`: from the backend;
 * `nat`: a NAT flow). Only a TCP flow's flags ever change:
 *  - embryonic: the backend's SYN-ACK adds FLOW_F_SYNACK (NAT: the caller keeps
 *    its sequence + 1 in ack_check); the client's ACK (no SYN, no RST)
 *    confirms the flow (NAT: only when it acknowledges that SYN-ACK);
 *  - confirmed: FIN or RST marks it closing; a segment with data and neither
 *    clears the mark (a connection still carrying data was not closed: the
 *    FIN/RST was forged or reordered).
 * FIN and RST of an embryonic flow change nothing: its timeout is short. */
static __always_inline __u8 flow_flags_next(const struct flow_entry *e, const struct packet *pkt,
					    int reply, int nat)
{
	__u8 f = e->flags, tf = pkt->tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST);

	if (pkt->key.proto != IPPROTO_TCP)
		return f;
	if (f & FLOW_F_EMBRYONIC) {
		if (reply)
			return tf == (TCPF_SYN | TCPF_ACK) ? f | FLOW_F_SYNACK : f;
		if (tf == TCPF_ACK &&
		    (!nat || ((f & FLOW_F_SYNACK) && (__u16)pkt->tcp_ack == e->ack_check)))
			f &= ~(FLOW_F_EMBRYONIC | FLOW_F_SYNACK);
		return f;
	}
	if (pkt->tcp_flags & (TCPF_FIN | TCPF_RST))
		return f | FLOW_F_CLOSING;
	if (pkt->tcp_data)
		return f & ~FLOW_F_CLOSING;
	return f;
}

/* Now in jiffies (low 32 bits), never 0: a claimed way's last_seen is never 0. */
static __always_inline __u32 flow_now(void)
{
	__u32 now = bpf_jiffies64();

	return now ? now : 1;
}

static __always_inline struct flow_entry *flow_at(__u32 idx)
{
	return bpf_map_lookup_elem(&flows, &idx);
}

static __always_inline __u32 nat_sets(void)
{
	return (__u32)knobs.nat_port_max - knobs.nat_port_min + 1;
}

/* The NAT port (network order) of the entry at `idx` of the NAT region. */
static __always_inline __u16 nat_port_of(__u32 idx)
{
	return bpf_htons(knobs.nat_port_min + idx / FLOW_WAYS);
}

static __always_inline int flow_stale(const struct flow_entry *e, __u32 now)
{
	return (__u32)(now - e->last_seen) > (__u32)flow_timeout(e->proto, e->flags);
}

static __always_inline int flow_match(const struct flow_entry *e, const struct flow_key *k)
{
	return e->src[0] == k->src[0] && e->dst[0] == k->dst[0] &&
	       *(__u32 *)&e->sport == *(__u32 *)&k->sport && e->proto == k->proto &&
	       e->family == k->family && e->src[1] == k->src[1] && e->src[2] == k->src[2] &&
	       e->src[3] == k->src[3] && e->dst[1] == k->dst[1] && e->dst[2] == k->dst[2] &&
	       e->dst[3] == k->dst[3];
}

/* Index of flow `k` in the `ways` entries from `first`, or FLOW_NONE;
 * *spill: the first entry's SET_F_SPILL. */
static __always_inline int ways_find(const struct flow_key *k, __u32 first, __u8 *spill,
				     const int ways)
{
	int w;

	for (w = 0; w < ways; w++) {
		struct flow_entry *e = flow_at(first + w);

		if (!e)
			return FLOW_NONE;
		if (w == 0)
			*spill = e->set_flags & SET_F_SPILL;
		if (e->family) {
			if (flow_match(e, k))
				return first + w;
		} else if (!e->last_seen) {
			return FLOW_NONE; /* (family 0, last_seen set: being published) */
		}
	}
	return FLOW_NONE;
}

static __always_inline int set_find(const struct flow_key *k, __u32 first, __u8 *spill)
{
	return ways_find(k, first, spill, FLOW_WAYS);
}

/* The conntrack region: buckets of CT_WAYS entries (two sets), knobs.ct_sets / 2
 * of them. A flow has two candidate buckets: its first, hash & mask, and a
 * second from a remix of the hash (power of two choices: at 75 % of the region
 * live, about 1 flow in 3,000 finds both full instead of 1 in 10 with one set
 * of 4; bench/fill.py). New flows stay in the first while it has fewer than
 * CT_PREFER live flows, else go to the less loaded one; a first bucket that
 * sent a flow to its second is marked SET_F_SPILL (on its first way), so a
 * lookup reads the second bucket only for those. */
static __always_inline __u32 ct_mask(void)
{
	return knobs.ct_sets / 2 - 1;
}

static __always_inline __u32 ct_first(__u32 bucket)
{
	return nat_sets() * FLOW_WAYS + bucket * CT_WAYS;
}

static __always_inline __u32 ct_bucket2(__u32 hash)
{
	__u32 h = ((hash >> 16) | (hash << 16)) * 0x85EBCA77u;

	return (h ^ (h >> 15)) & ct_mask();
}

/* A conntrack flow in its second bucket: a global function (rare). */
__attribute__((noinline)) int ct_find_spilled(const struct flow_key *k, __u32 hash)
{
	__u32 b1 = hash & ct_mask(), b2 = ct_bucket2(hash);
	__u8 spill = 0;

	if (!k || b2 == b1)
		return FLOW_NONE;
	return ways_find(k, ct_first(b2), &spill, CT_WAYS);
}

static __always_inline __u32 nat_next(__u32 s)
{
	return s + 1 == nat_sets() ? 0 : s + 1;
}

/* The rest of a NAT flow's probe sequence, after its first set (spilled from),
 * starting at set `s`: the flow's index, or FLOW_NONE. A global function: rare
 * and the verifier walks its loop once. */
__attribute__((noinline)) int nat_find_spilled(const struct flow_key *k, __u32 s)
{
	__u8 spill = 0;
	int i, idx;

	if (!k)
		return FLOW_NONE;
	for (i = 1; i < NAT_PROBES; i++) {
		idx = set_find(k, s * FLOW_WAYS, &spill);
		if (idx != FLOW_NONE || !spill)
			return idx;
		s = nat_next(s);
	}
	return FLOW_NONE;
}

/* The entry of flow `k` (flow hash `hash`) of a NAT VIP (nat != 0) or of
 * another mode: its index, or FLOW_NONE. Inline: every VIP packet runs it. */
static __always_inline int flow_find(const struct flow_key *k, __u32 hash, __u32 nat)
{
	__u8 spill = 0;
	__u32 s;
	int idx;

	if (!nat) {
		idx = ways_find(k, ct_first(hash & ct_mask()), &spill, CT_WAYS);
		if (idx != FLOW_NONE || !spill)
			return idx;
		return ct_find_spilled(k, hash);
	}
	s = hash % nat_sets();
	idx = set_find(k, s * FLOW_WAYS, &spill);
	if (idx != FLOW_NONE || !spill)
		return idx;
	return nat_find_spilled(k, nat_next(s));
}

/* A backend's reply on a NAT flow (`k`: backend -> SNAT address:NAT port):
 * the flow's index, or FLOW_NONE. Inline: every reply runs it. */
static __always_inline int nat_reply_find(const struct flow_key *k)
{
	__u32 port, first, tag;
	int w;

	if (!k)
		return FLOW_NONE;
	port = bpf_ntohs(k->dport);
	if (port < knobs.nat_port_min || port > knobs.nat_port_max)
		return FLOW_NONE;
	first = (port - knobs.nat_port_min) * FLOW_WAYS;
	tag = reply_tag(k->src, k->sport, k->dst, k->proto, knobs.hash_seed);
	for (w = 0; w < FLOW_WAYS; w++) {
		struct flow_entry *e = flow_at(first + w);
		struct backend *be;

		if (!e)
			return FLOW_NONE;
		if (!e->family) {
			if (!e->last_seen)
				return FLOW_NONE;
			continue;
		}
		if (e->reply_tag != tag || e->proto != k->proto || e->family != k->family)
			continue;
		be = bpf_map_lookup_elem(&backends, &e->backend_id);
		if (be && be->addr[0] == k->src[0] && be->addr[1] == k->src[1] &&
		    be->addr[2] == k->src[2] && be->addr[3] == k->src[3] &&
		    (be->port ? be->port : e->dport) == k->sport &&
		    be->snat_addr[0] == k->dst[0] && be->snat_addr[1] == k->dst[1] &&
		    be->snat_addr[2] == k->dst[2] && be->snat_addr[3] == k->dst[3])
			return first + w;
	}
	return FLOW_NONE;
}

/* A new flow: the entry to publish and what its way is chosen by. */
struct flow_new {
	struct flow_entry e; /* key, flags, backend_id, reply_tag, client_* filled */
	__u32 hash;          /* flow hash */
	__u32 now;           /* jiffies, never 0 (flow_now) */
};

/* Take the way at `idx` (last_seen `seen` when it was judged free) and publish
 * `n` in it: 0, or -1 when another CPU took it first. The compare-and-swap is
 * on last_seen and reply_tag (one aligned 8-byte word: 64-bit atomics are in
 * every BPF instruction set version). */
static __always_inline int flow_publish(__u32 idx, __u32 seen, const struct flow_new *n)
{
	struct flow_entry *e = flow_at(idx);
	__u64 old, new;

	if (!e)
		return -1;
	old = ((__u64)e->reply_tag << 32) | seen;
	new = ((__u64)n->e.reply_tag << 32) | n->now;
	if (__sync_val_compare_and_swap(
		    (__u64 *)((void *)e + __builtin_offsetof(struct flow_entry, last_seen)), old,
		    new) != old)
		return -1;
	__builtin_memcpy(e->src, n->e.src, sizeof(e->src));
	__builtin_memcpy(e->dst, n->e.dst, sizeof(e->dst));
	e->sport = n->e.sport;
	e->dport = n->e.dport;
	e->proto = n->e.proto;
	e->flags = n->e.flags;
	e->backend_id = n->e.backend_id;
	e->client_ifindex = n->e.client_ifindex;
	__builtin_memcpy(e->client_mac, n->e.client_mac, sizeof(e->client_mac));
	e->ack_check = 0;
	e->family = n->e.family; /* last: a never-used way becomes visible whole */
	return 0;
}

/* The way a new flow may take when none is free: the least valuable live
 * flow seen, embryonic before closing before confirmed (the latter only in
 * the conntrack region), the longest idle first. */
struct victim {
	int idx;    /* FLOW_NONE: none yet */
	__u32 seen; /* its last_seen when judged */
	__u32 score;
};

/* (field by field: an initialised struct constant would land in .rodata) */
static __always_inline void victim_init(struct victim *v)
{
	v->idx = FLOW_NONE;
	v->seen = 0;
	v->score = 0;
}

#define VICTIM_EMBRYONIC 2
#define VICTIM_CLOSING 1
#define VICTIM_LIVE 0

static __always_inline __u32 victim_rank(__u8 flags)
{
	if (flags & FLOW_F_EMBRYONIC)
		return VICTIM_EMBRYONIC;
	return flags & FLOW_F_CLOSING ? VICTIM_CLOSING : VICTIM_LIVE;
}

/* Consider the live flow `e` at `idx` as the victim `v` (rank at least `min`). */
static __always_inline void victim_consider(struct victim *v, __u32 idx, const struct flow_entry *e,
					    __u32 now, __u32 min)
{
	__u32 rank = victim_rank(e->flags), age = (now - e->last_seen) >> (runtime.age_shift & 31);
	__u32 score;

	if (rank < min)
		return;
	score = (rank << 30) | (age < 0x3fffffffu ? age : 0x3fffffffu);
	if (v->idx == FLOW_NONE || score > v->score) {
		v->idx = idx;
		v->seen = e->last_seen;
		v->score = score;
	}
}

/* The counter of an eviction of victim `v`. */
static __always_inline void count_eviction(const struct victim *v)
{
	__u32 rank = v->score >> 30; /* (arithmetic: a lookup table would land in .rodata) */

	count_stat(rank ? ST_EVICT_CLOSING + rank - VICTIM_CLOSING : ST_CT_FULL, 0);
}

/* A way for new NAT flow `n` in the set starting at `first`: a stale way with
 * the same reply tuple (replies must find one flow only), else the first
 * never-used or stale way; FLOW_NONE when the set is full or a live flow has
 * the same reply tuple. *seen: the way's last_seen. An embryonic or closing
 * way the new flow could take instead goes to `v` (with a live flow of the
 * same reply tuple, only that flow's way). A global function: the verifier
 * walks it once, not once per probe. */
__attribute__((noinline)) int nat_set_pick(const struct flow_new *n, __u32 first, __u32 *seen,
					   struct victim *v)
{
	int w, pick = FLOW_NONE, same = FLOW_NONE;
	__u32 pick_seen = 0, same_seen = 0;
	struct victim sv;

	if (!n || !seen || !v)
		return FLOW_NONE;
	victim_init(&sv);
	for (w = 0; w < FLOW_WAYS; w++) {
		__u32 idx = first + w;
		struct flow_entry *e = flow_at(idx);
		int stale;

		if (!e)
			return FLOW_NONE;
		if (!e->family && e->last_seen)
			continue; /* being published by another CPU */
		stale = !e->family || flow_stale(e, n->now);
		if (e->family && e->reply_tag == n->e.reply_tag) {
			if (!stale) {
				victim_init(&sv);
				victim_consider(&sv, idx, e, n->now, VICTIM_CLOSING);
				if (sv.idx != FLOW_NONE && (v->idx == FLOW_NONE || sv.score > v->score))
					*v = sv;
				return FLOW_NONE;
			}
			if (same == FLOW_NONE) {
				same = idx;
				same_seen = e->last_seen;
			}
		}
		if (!stale)
			victim_consider(&sv, idx, e, n->now, VICTIM_CLOSING);
		if (stale && pick == FLOW_NONE) {
			pick = idx;
			pick_seen = e->last_seen;
		}
		if (!e->family)
			break;
	}
	if (same != FLOW_NONE) {
		*seen = same_seen;
		return same;
	}
	if (pick == FLOW_NONE && sv.idx != FLOW_NONE && (v->idx == FLOW_NONE || sv.score > v->score))
		*v = sv;
	*seen = pick_seen;
	return pick;
}

/* A way for new NAT flow `n`: its index (the port is its set), FLOW_NONE when
 * none of its NAT_PROBES sets has a free way or an embryonic or closing flow
 * to evict. A global function. */
__attribute__((noinline)) int nat_claim(struct flow_new *n)
{
	__u32 s, seen = 0, i, t;
	struct victim v;
	int idx;

	if (!n)
		return FLOW_NONE;
	victim_init(&v);
	s = n->hash % nat_sets();
	for (i = 0; i < NAT_PROBES; i++) { /* the flow's set, then the next ones */
		struct flow_entry *first;

		for (t = 0; t < 2; t++) { /* again if another CPU took the way first */
			if (test_bit(runtime.port_bits, knobs.nat_port_min + s))
				break; /* a VIP port: replies to it would look like new flows */
			idx = nat_set_pick(n, s * FLOW_WAYS, &seen, &v);
			if (idx == FLOW_NONE)
				break;
			if (!flow_publish(idx, seen, n))
				return idx;
		}
		first = flow_at(s * FLOW_WAYS);
		if (!first || i == NAT_PROBES - 1)
			break;
		if (!(first->set_flags & SET_F_SPILL))
			first->set_flags |= SET_F_SPILL;
		s = nat_next(s);
	}
	if (v.idx == FLOW_NONE || flow_publish(v.idx, v.seen, n))
		return FLOW_NONE;
	count_eviction(&v);
	if ((v.score >> 30) == VICTIM_EMBRYONIC)
		flood_engage(); /* a live handshake lost its way: the table is under pressure */
	return v.idx;
}

/* A flow whose backend was removed, or whose tuple a SYN opens again, gives up
 * its entry: it matches no packet and is free to reuse. */
static __always_inline void flow_retire(struct flow_entry *e, __u32 now)
{
	e->proto = 0;
	e->last_seen = now - 0x80000000u;
}

/* What a conntrack bucket offers a new flow `n`: its first free or stale
 * way (or FLOW_NONE) and that way's last_seen, its live flows, and the best
 * victim among them (into `v`). A global function. */
struct ct_scan {
	int free;
	__u32 free_seen;
	__u32 live;
};

__attribute__((noinline)) int ct_bucket_scan(const struct flow_new *n, __u32 first,
					     struct ct_scan *out, struct victim *v)
{
	int w;

	if (!n || !out || !v)
		return 0;
	out->free = FLOW_NONE;
	out->free_seen = 0;
	out->live = 0;
	for (w = 0; w < CT_WAYS; w++) {
		struct flow_entry *e = flow_at(first + w);

		if (!e)
			return 0;
		if (!e->family && e->last_seen) {
			out->live++; /* being published by another CPU */
			continue;
		}
		if (!e->family || flow_stale(e, n->now)) {
			if (out->free == FLOW_NONE) {
				out->free = first + w;
				out->free_seen = e->last_seen;
			}
			if (!e->family)
				break; /* ways fill in order: the rest are never used */
			continue;
		}
		out->live++;
		victim_consider(v, first + w, e, n->now, VICTIM_LIVE);
	}
	return 0;
}

/* A way for new conntrack flow `n`: a free or stale way of its first bucket
 * while that has fewer than CT_PREFER live flows, else of the less loaded of
 * its two buckets, else the victim's of both (embryonic, closing, then the
 * longest idle flow: counted). A global function. */
__attribute__((noinline)) int ct_claim(struct flow_new *n)
{
	struct ct_scan s1, s2;
	struct flow_entry *head;
	__u32 b1, b2, seen;
	struct victim v;
	int idx, spill;

	if (!n)
		return FLOW_NONE;
	b1 = n->hash & ct_mask();
	b2 = ct_bucket2(n->hash);
	victim_init(&v);
	ct_bucket_scan(n, ct_first(b1), &s1, &v);
	if (s1.free != FLOW_NONE && s1.live < CT_PREFER) {
		idx = s1.free;
		seen = s1.free_seen;
		spill = 0;
	} else {
		s2.free = FLOW_NONE;
		s2.free_seen = 0;
		s2.live = CT_WAYS;
		if (b2 != b1)
			ct_bucket_scan(n, ct_first(b2), &s2, &v);
		if (s1.free != FLOW_NONE && (s2.free == FLOW_NONE || s1.live <= s2.live)) {
			idx = s1.free;
			seen = s1.free_seen;
			spill = 0;
		} else if (s2.free != FLOW_NONE) {
			idx = s2.free;
			seen = s2.free_seen;
			spill = 1;
		} else {
			if (v.idx == FLOW_NONE)
				return FLOW_NONE;
			idx = v.idx;
			seen = v.seen;
			spill = (__u32)idx >= ct_first(b2) && (__u32)idx < ct_first(b2) + CT_WAYS &&
				b2 != b1;
		}
	}
	if (spill) { /* before publishing: a lookup must never miss the flow */
		head = flow_at(ct_first(b1));
		if (!head)
			return FLOW_NONE;
		if (!(head->set_flags & SET_F_SPILL))
			head->set_flags |= SET_F_SPILL;
	}
	if (flow_publish(idx, seen, n))
		return FLOW_NONE; /* another CPU took the way: the flow's next packet retries */
	if (idx == v.idx)
		count_eviction(&v);
	return idx;
}

/* Keep a live flow's entry fresh: last_seen rewritten at most every
 * runtime.refresh (a clean cache line stays clean), flags when they change. */
static __always_inline void flow_touch(struct flow_entry *e, __u32 now, __u8 flags)
{
	if ((__u32)(now - e->last_seen) >= (__u32)runtime.refresh || flags != e->flags) {
		e->last_seen = now;
		e->flags = flags;
	}
}

/* May a non-SYN miss (not NAT) create an entry? Within this CPU's budget of
 * runtime.nonsyn_budget a second (flows ECMP moved here from another node
 * need one; a flood of them gets no more). */
static __always_inline int nonsyn_admit(__u32 now)
{
	__u32 zero = 0;
	struct flood_state *b = bpf_map_lookup_elem(&flood, &zero);

	if (!b)
		return 0;
	if ((__u32)(now - (__u32)b->window) >= runtime.hz) {
		b->window = now;
		b->used = 0;
	}
	if (b->used >= runtime.nonsyn_budget)
		return 0;
	b->used++;
	return 1;
}

#endif
