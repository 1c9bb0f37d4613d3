// SPDX-License-Identifier: GPL-2.0
/* tutorial_peer.bpf.c - the tutorial's load balancer as a benchmark peer,
 * re-written from its description (docs/seed-defects.md)
 * without its nine bpf_printk calls (those alone cost ~5 us per packet).
 *
 *   tutorial_lb       the listing as printed: xxhash32 over the 20-byte IPv4
 *                     header % 2, one hard-coded client, address and MAC
 *                     rewrite, IPv4 checksum over a fixed 20 bytes, TCP
 *                     checksum left stale.
 *   tutorial_lb_rev2  its later revision: xxhash32 over the 4-tuple, and the
 *                     TCP checksum recomputed by a loop over 16-bit words
 *                     (at most 751 of them, i.e. 1502 bytes), the L4 length
 *                     taken from the frame end.
 *
 * Their defects (docs/seed-defects.md) are kept on purpose: this is what xdplb
 * is compared with, not something to run. No VIP check either: every TCP frame
 * is balanced. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define REV2_MAX_WORDS 750 /* loop runs 0..750 inclusive: 1502 bytes */

struct backend_config {
	__u32 ip;
	unsigned char mac[ETH_ALEN];
};

/* slot (hash % 2) -> backend: the tutorial's two backends. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct backend_config);
} backends SEC(".maps");

/* Plain (writable) globals, as in the tutorial: read from .data per packet. */
__u32 client_ip = bpf_htonl(0x0a000001);
unsigned char client_mac[ETH_ALEN] = {0xde, 0xad, 0xbe, 0xef, 0x00, 0x01};
__u32 load_balancer_ip = bpf_htonl(0x0a00000a);
unsigned char load_balancer_mac[ETH_ALEN] = {0xde, 0xad, 0xbe, 0xef, 0x00, 0x10};

/* xxhash32 (Yann Collet's XXH32) for a length known at compile time, so that
 * every loop unrolls to fixed offsets the verifier can check once. Words are
 * loaded little-endian, as on the tutorial's x86 hosts. */
#define XXH_P1 0x9E3779B1u
#define XXH_P2 0x85EBCA77u
#define XXH_P3 0xC2B2AE3Du
#define XXH_P4 0x27D4EB2Fu
#define XXH_P5 0x165667B1u

static __always_inline __u32 xxh_rotl(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 xxh_round(__u32 acc, __u32 w)
{
	return xxh_rotl(acc + w * XXH_P2, 13) * XXH_P1;
}

static __always_inline __u32 xxhash32(const __u8 *p, const __u32 len, __u32 seed)
{
	__u32 h, off = 0;

	if (len >= 16) {
		__u32 v1 = seed + XXH_P1 + XXH_P2, v2 = seed + XXH_P2;
		__u32 v3 = seed, v4 = seed - XXH_P1;

#pragma unroll
		for (; off + 16 <= len; off += 16) {
			v1 = xxh_round(v1, *(const __u32 *)(p + off));
			v2 = xxh_round(v2, *(const __u32 *)(p + off + 4));
			v3 = xxh_round(v3, *(const __u32 *)(p + off + 8));
			v4 = xxh_round(v4, *(const __u32 *)(p + off + 12));
		}
		h = xxh_rotl(v1, 1) + xxh_rotl(v2, 7) + xxh_rotl(v3, 12) + xxh_rotl(v4, 18);
	} else {
		h = seed + XXH_P5;
	}
	h += len;
#pragma unroll
	for (; off + 4 <= len; off += 4)
		h = xxh_rotl(h + *(const __u32 *)(p + off) * XXH_P3, 17) * XXH_P4;
#pragma unroll
	for (; off < len; off++)
		h = xxh_rotl(h + p[off] * XXH_P5, 11) * XXH_P1;
	h ^= h >> 15;
	h *= XXH_P2;
	h ^= h >> 13;
	h *= XXH_P3;
	h ^= h >> 16;
	return h;
}

/* The tutorial's fold: four conditional carries, then invert. */
static __always_inline __u16 csum_fold_helper(__u64 csum)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (csum >> 16)
			csum = (csum & 0xffff) + (csum >> 16);
	return ~csum;
}

/* IPv4 header checksum over a fixed 20 bytes (options ignored, as printed). */
static __always_inline __u16 iph_csum(struct iphdr *iph)
{
	iph->check = 0;
	return csum_fold_helper(bpf_csum_diff(0, 0, (__be32 *)iph, sizeof(*iph), 0));
}

/* rev2's TCP checksum: pseudo header with the length from the frame end
 * (Ethernet padding counted), then every 16-bit word up to the frame end or
 * 1502 bytes, whichever comes first; an odd last byte is dropped. */
static __always_inline __u16 tcph_csum_rev2(struct tcphdr *th, struct iphdr *iph, void *data_end)
{
	__u32 sum = 0;

	th->check = 0;
	sum += (__u16)(iph->saddr >> 16) + (__u16)(iph->saddr & 0xffff);
	sum += (__u16)(iph->daddr >> 16) + (__u16)(iph->daddr & 0xffff);
	sum += bpf_htons(IPPROTO_TCP);
	sum += bpf_htons((__u16)(data_end - (void *)th));
#pragma clang loop unroll(full)
	for (int i = 0; i <= REV2_MAX_WORDS; i++) {
		__u16 *w = (__u16 *)th + i;

		if ((void *)(w + 1) > data_end)
			break;
		sum += *w;
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Client -> backend chosen by `key`, anyone else -> the client; the LB is
 * the new source. Returns 0, or -1 when the backend slot is missing. */
static __always_inline int rewrite(struct ethhdr *eth, struct iphdr *iph, __u32 key)
{
	if (iph->saddr == client_ip) {
		struct backend_config *be = bpf_map_lookup_elem(&backends, &key);

		if (!be)
			return -1;
		iph->daddr = be->ip;
		__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	} else {
		iph->daddr = client_ip;
		__builtin_memcpy(eth->h_dest, client_mac, ETH_ALEN);
	}
	iph->saddr = load_balancer_ip;
	__builtin_memcpy(eth->h_source, load_balancer_mac, ETH_ALEN);
	iph->check = iph_csum(iph);
	return 0;
}

SEC("xdp")
int tutorial_lb(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct iphdr *iph = (void *)(eth + 1);

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_TCP)
		return XDP_PASS;
	/* the hash (and so the slot) is only used for client frames */
	if (rewrite(eth, iph, xxhash32((const __u8 *)iph, sizeof(*iph), 0) % 2))
		return XDP_PASS;
	return XDP_TX;
}

SEC("xdp")
int tutorial_lb_rev2(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct iphdr *iph = (void *)(eth + 1);
	struct tcphdr *th;
	struct {
		__u32 src_ip;
		__u32 dst_ip;
		__u16 src_port;
		__u16 dst_port;
	} tuple;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_TCP)
		return XDP_PASS;
	th = (void *)iph + iph->ihl * 4;
	if ((void *)(th + 1) > data_end)
		return XDP_PASS;
	tuple.src_ip = iph->saddr;
	tuple.dst_ip = iph->daddr;
	tuple.src_port = bpf_ntohs(th->source);
	tuple.dst_port = bpf_ntohs(th->dest);
	if (rewrite(eth, iph, xxhash32((const __u8 *)&tuple, sizeof(tuple), 0) % 2))
		return XDP_PASS;
	th->check = tcph_csum_rev2(th, iph, data_end);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
