/* SPDX-License-Identifier: GPL-2.0 */
/* guard.h - a TCP miss of a NAT VIP that must not create a flow: the SYN
 * challenge while flood protection is engaged, and the RST answers.
 *
 * SYN challenge (stateless; the LB does not terminate TCP, so no SYN cookie
 * can stand in for the handshake itself). While engaged, a SYN from an address
 * not in `verified` creates nothing: the frame goes back as a SYN-ACK whose
 * acknowledgment number is a cookie, a keyed hash of the tuple and a coarse
 * time slot, deliberately not the client's ISN + 1. A real client in SYN-SENT
 * answers an unacceptable ACK with an RST whose sequence number is that ACK
 * number (RFC 793; Linux: tcp_rcv_synsent_state_process, which also re-arms
 * the SYN's retransmission to TCP_TIMEOUT_MIN, 2 jiffies, when it had not
 * retransmitted yet). That RST arrives here as a non-SYN miss: its sequence
 * number equals the cookie of the current or the previous slot, so the
 * address goes into `verified` and the client's next SYN, a few ms later,
 * is admitted. A spoofed source never answers: a flood costs no table space.
 *
 * Engaged, per CPU (`flood` map): runtime.syn_challenge CHALLENGE_ALWAYS, or
 * CHALLENGE_AUTO and either more than syn_challenge_rate NAT SYN misses in the
 * current second, or a new flow had to evict an embryonic flow (a live one:
 * the table is under pressure); both keep it engaged for challenge_hold.
 *
 * RST answers (per-CPU token bucket of rst_rate a second, a second's worth of
 * burst): a packet without SYN of a flow whose entry this node retired (its
 * backend removed, the flow re-selected: the new backend never saw the
 * handshake) gets an RST (RFC 793: seq = its ACK number; without ACK, RST|ACK
 * acknowledging it), a SYN that finds no way an RST|ACK; an RST is never
 * answered. A plain miss without SYN is dropped, unanswered: on a node of an
 * ECMP group it may be a flow another node holds whose synced entry has not
 * arrived yet (or a takeover's), and its retransmission will find it.
 *
 * Global functions: the established path never calls them, and the verifier
 * walks them once. src/xdplb/model.py mirrors every byte. */
#ifndef XDPLB_GUARD_H
#define XDPLB_GUARD_H

#include "csum.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"

#define ANSWER_MISS 0    /* a TCP miss: a SYN challenged or admitted, an RST may verify */
#define ANSWER_RETIRED 1 /* the same, of a flow whose entry was just retired (re-selected) */
#define ANSWER_FULL 2    /* a SYN that found no way */

static __always_inline struct flood_state *flood_of_cpu(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&flood, &zero);
}

/* The challenge cookie of flow `k` in time slot `slot` (a keyed hash, not a MAC:
 * a key recovered from observed cookies only lets spoofed sources back to the
 * eviction rules that hold without the challenge). */
static __always_inline __u32 syn_cookie(const struct flow_key *k, __u64 slot)
{
	__u32 h = runtime.cookie_secret[0] ^ (__u32)slot;

	h = hash_round(h, runtime.cookie_secret[1]);
	h = hash_round(h, k->src[0]);
	h = hash_round(h, k->src[1]);
	h = hash_round(h, k->src[2]);
	h = hash_round(h, k->src[3]);
	h = hash_round(h, runtime.cookie_secret[2]);
	h = hash_round(h, k->dst[0]);
	h = hash_round(h, k->dst[1]);
	h = hash_round(h, k->dst[2]);
	h = hash_round(h, k->dst[3]);
	h = hash_round(h, (__u32)k->sport | ((__u32)k->dport << 16));
	h = hash_round(h, runtime.cookie_secret[3] ^ k->family);
	h ^= h >> 15;
	h *= H_P2;
	h ^= h >> 13;
	h *= H_P3;
	h ^= h >> 16;
	return h;
}

static __always_inline __u64 cookie_slot(__u64 now)
{
	return now >> (runtime.cookie_shift & 63);
}

/* May an RST answer go out now? A token bucket as a virtual schedule: `rst_tat`
 * (in jiffies x rst_rate) is when the next answer is due; one answer costs hz,
 * and the schedule may run one second (rst_rate answers) ahead of now. */
static __always_inline int rst_admit(struct flood_state *fs, __u64 now)
{
	__u64 rate = runtime.rst_rate, hz = runtime.hz, t = now * rate, tat = fs->rst_tat;

	if (!rate)
		return 0;
	if (tat < t)
		tat = t;
	if (tat + hz - t > rate * hz)
		return 0;
	fs->rst_tat = tat + hz;
	return 1;
}

/* One's complement sum of five 32-bit words as loaded (byte-order independent). */
static __always_inline __u64 csum_words5(const __u32 *w)
{
	return (__u64)w[0] + w[1] + w[2] + w[3] + w[4];
}

/* Turn the frame of `pkt` into a bare TCP segment from its destination back to
 * its source: seq, ack (host order) and flags given, a 20-byte header (options
 * and payload dropped), window 0; IPv4 gets a fresh 20-byte header (options
 * dropped; DF, TTL 64, id 0), IPv6 a fresh 40-byte one (extension headers
 * dropped; hop limit 64); the Ethernet (+VLAN) header keeps its tag, its
 * addresses swapped (our source: knobs.if_mac when set). 0, or -1 with the
 * frame untouched. */
static __always_inline int answer_tcp(struct xdp_md *ctx, const struct packet *pkt, __u32 seq,
				      __u32 ack, __u8 flags)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int v4 = pkt->key.family == XDPLB_AF_INET;
	__u32 l3 = pkt->l3_off, len, d0;
	struct ethhdr *eth;
	struct tcphdr *th;
	__u64 sum;
	__u16 d1;

	if (l3 > 18)
		return -1;
	len = l3 + (v4 ? 20 : 40) + 20;
	if (data + len > data_end)
		return -1;
	if (bpf_xdp_adjust_tail(ctx, (int)len - (int)(data_end - data)))
		return -1;
	/* adjust_tail moved data_end: every pointer is derived again */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	d0 = *(__u32 *)eth->h_dest;
	d1 = *(__u16 *)(eth->h_dest + 4);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	if (knobs.mac_check) { /* volatile reads: set by the loader */
		*(__u32 *)eth->h_source = *(const volatile __u32 *)knobs.if_mac;
		*(__u16 *)(eth->h_source + 4) = *(const volatile __u16 *)(knobs.if_mac + 4);
	} else {
		*(__u32 *)eth->h_source = d0;
		*(__u16 *)(eth->h_source + 4) = d1;
	}
	if (v4) {
		struct iphdr *iph = data + l3;

		th = (void *)(iph + 1);
		if ((void *)(th + 1) > data_end)
			return -1;
		*(__u16 *)iph = bpf_htons(0x4500); /* version 4, ihl 5, tos 0 */
		iph->tot_len = bpf_htons(40);
		iph->id = 0;
		iph->frag_off = bpf_htons(0x4000); /* DF */
		iph->ttl = 64;
		iph->protocol = IPPROTO_TCP;
		iph->check = 0;
		iph->saddr = pkt->key.dst[0];
		iph->daddr = pkt->key.src[0];
		iph->check = ~csum_fold64(csum_words5((__u32 *)iph));
		sum = csum_pseudo(pkt->key.dst, pkt->key.src, 1, IPPROTO_TCP, 20);
	} else {
		struct ipv6hdr *ip6 = data + l3;

		th = (void *)(ip6 + 1);
		if ((void *)(th + 1) > data_end)
			return -1;
		*(__u32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(20);
		ip6->nexthdr = IPPROTO_TCP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, pkt->key.dst, 16);
		__builtin_memcpy(&ip6->daddr, pkt->key.src, 16);
		sum = csum_pseudo(pkt->key.dst, pkt->key.src, 4, IPPROTO_TCP, 20);
	}
	th->source = pkt->key.dport;
	th->dest = pkt->key.sport;
	th->seq = bpf_htonl(seq);
	th->ack_seq = bpf_htonl(ack);
	((__u8 *)th)[12] = 5 << 4; /* doff 5 */
	((__u8 *)th)[13] = flags;
	th->window = 0;
	th->check = 0;
	th->urg_ptr = 0;
	th->check = ~csum_fold64(sum + csum_words5((__u32 *)th));
	return 0;
}

static __always_inline void verified_key_of(struct verified_key *vk, const struct flow_key *k)
{
	__builtin_memcpy(vk->addr, k->src, sizeof(vk->addr));
	vk->family = k->family;
}

/* A SYN miss: ST_FWD_NEW to admit it, ST_SYN_CHALLENGE when the frame is now
 * the challenge. */
static __always_inline int syn_gate(struct xdp_md *ctx, const struct packet *pkt,
				    struct flood_state *fs, __u64 now)
{
	struct verified_key vk;
	__u64 *at;
	__u32 c;

	if (runtime.syn_challenge == CHALLENGE_OFF)
		return ST_FWD_NEW;
	if (runtime.syn_challenge != CHALLENGE_ALWAYS) {
		if (now - fs->syn_window >= runtime.hz) {
			fs->syn_window = now;
			fs->syns = 0;
		}
		if (++fs->syns > runtime.syn_challenge_rate)
			fs->engaged_until = now + runtime.challenge_hold;
		if (now >= fs->engaged_until)
			return ST_FWD_NEW;
	}
	verified_key_of(&vk, &pkt->key);
	at = bpf_map_lookup_elem(&verified, &vk);
	if (at && now - *at <= runtime.verified_timeout)
		return ST_FWD_NEW;
	c = syn_cookie(&pkt->key, cookie_slot(now));
	if (c == pkt->tcp_seq + 1)
		c ^= 1; /* never an acceptable ACK: the client must answer with an RST */
	if (answer_tcp(ctx, pkt, c, c, TCPF_SYN | TCPF_ACK))
		return ST_FWD_NEW;
	return ST_SYN_CHALLENGE;
}

/* A client's RST miss: does it carry the cookie of its tuple (this slot or the
 * previous; the low bit is the ISN + 1 dodge)? Then its address is verified. */
static __always_inline int cookie_check(const struct packet *pkt, __u64 now)
{
	__u64 slot = cookie_slot(now);
	__u32 s = pkt->tcp_seq | 1;
	struct verified_key vk;

	if (s != (syn_cookie(&pkt->key, slot) | 1) && s != (syn_cookie(&pkt->key, slot - 1) | 1))
		return 0;
	verified_key_of(&vk, &pkt->key);
	bpf_map_update_elem(&verified, &vk, &now, BPF_ANY);
	return 1;
}

/* The segment length a RST|ACK acknowledges: payload, and the FIN (SYN never
 * reaches here without ACK). 0 when the header is too deep to read. */
static __always_inline __u32 seg_len(struct xdp_md *ctx, const struct packet *pkt)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = pkt->l4_off, hlen;
	__u8 *th;

	if (off > 512)
		return 0;
	th = (void *)(long)ctx->data + off;
	if ((void *)(th + 14) > data_end)
		return 0;
	hlen = (th[12] >> 4) * 4;
	return (pkt->l4_len > hlen ? pkt->l4_len - hlen : 0) + (pkt->tcp_flags & TCPF_FIN ? 1 : 0);
}

/* A TCP miss of a NAT VIP (`what`: ANSWER_MISS, ANSWER_RETIRED, or ANSWER_FULL
 * for a SYN that found no way): ST_FWD_NEW when the SYN may go on to create a
 * flow, else the stat of what was done. ST_SYN_CHALLENGE, ST_RST_NOT_SYN and
 * ST_RST_NAT_FULL: the frame is the answer (XDP_TX); the others: dropped. */
__attribute__((noinline)) int nat_tcp_miss(struct xdp_md *ctx, struct packet *pkt, int what)
{
	struct flood_state *fs;
	__u64 now;

	if (!pkt)
		return ST_DROP_NOT_SYN;
	fs = flood_of_cpu();
	if (!fs)
		return what == ANSWER_FULL ? ST_DROP_NAT_FULL : ST_DROP_NOT_SYN;
	now = bpf_jiffies64();
	if (what == ANSWER_FULL) {
		if (rst_admit(fs, now) &&
		    !answer_tcp(ctx, pkt, 0, pkt->tcp_seq + 1, TCPF_RST | TCPF_ACK))
			return ST_RST_NAT_FULL;
		return ST_DROP_NAT_FULL;
	}
	if ((pkt->tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST)) == TCPF_SYN)
		return syn_gate(ctx, pkt, fs, now);
	if (pkt->tcp_flags & TCPF_RST) /* never answered */
		return cookie_check(pkt, now) ? ST_SYN_VERIFIED : ST_DROP_NOT_SYN;
	if (what != ANSWER_RETIRED || !rst_admit(fs, now))
		return ST_DROP_NOT_SYN;
	if (pkt->tcp_flags & TCPF_ACK) {
		if (answer_tcp(ctx, pkt, pkt->tcp_ack, 0, TCPF_RST))
			return ST_DROP_NOT_SYN;
	} else if (answer_tcp(ctx, pkt, 0, pkt->tcp_seq + seg_len(ctx, pkt),
			      TCPF_RST | TCPF_ACK)) {
		return ST_DROP_NOT_SYN;
	}
	return ST_RST_NOT_SYN;
}

/* A new flow evicted an embryonic one (a live handshake): the table is under
 * pressure, engage the challenge on this CPU (CHALLENGE_AUTO). */
static __always_inline void flood_engage(void)
{
	struct flood_state *fs;

	if (runtime.syn_challenge != CHALLENGE_AUTO)
		return;
	fs = flood_of_cpu();
	if (fs)
		fs->engaged_until = bpf_jiffies64() + runtime.challenge_hold;
}

#endif
