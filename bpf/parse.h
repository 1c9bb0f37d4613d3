/* SPDX-License-Identifier: GPL-2.0 */
/* parse.h - header cursor: Ethernet (one optional VLAN tag), IPv4 (ihl checked,
 * options honoured, fragments flagged), IPv6 (extension headers skipped up to
 * a bound), TCP/UDP. Lengths come from the IP header, never from the frame end
 * (Ethernet padding is not payload). Nothing here writes to the packet. */
#ifndef XDPLB_PARSE_H
#define XDPLB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "abi.h"

#ifndef IPV6_EXT_MAX
#define IPV6_EXT_MAX 4
#endif /* extension headers skipped before giving up */

enum parse_result {
	PARSE_OK = 0,   /* TCP/UDP with ports */
	PARSE_NOT_IP,   /* not IPv4/IPv6 */
	PARSE_OTHER_L4, /* IP, but not TCP/UDP (ICMP, ...) */
	PARSE_FRAG,     /* IP fragment: no reliable ports */
	PARSE_MALFORMED,
};

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* What the parser learnt; offsets only, so that later stages can be verified
 * once (in a global function) whatever path the parser took. */
struct packet {
	__u32 l3_off;
	__u32 l4_off;
	struct flow_key key; /* as on the wire, network order */
	__u32 l4_len;        /* from the IP header */
	__u32 frame_len;
	__u32 ifindex;       /* ingress interface */
	__u8 tcp_flags;      /* FIN/SYN/RST/ACK bits, 0 for UDP */
	__u8 maybe_vip;      /* set by the entry: the VIP pre-filter's answer */
	__u8 tcp_data;       /* TCP: the segment carries payload (after the header's options) */
	union {
		struct { /* TCP sequence and acknowledgment numbers, host order */
			__u32 tcp_seq;
			__u32 tcp_ack;
		};
		struct { /* a tunnel VIP's packet on its way back to the entry (encap.h) */
			__u32 tun_hash; /* the flow hash: outer UDP port, IPv6 flow label */
			__u32 tun_hint; /* gue: the second chance's hint, a backend id */
		};
	};
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/* Is the frame addressed to the interface's own MAC (knobs.if_mac)? A switch
 * floods unknown unicast and a promiscuous NIC hands over everything: such a
 * frame is another host's, never balanced. Broadcast/multicast (ARP, NDP) are
 * not ours either: the stack takes them. */
static __always_inline int is_for_us(const struct xdp_md *ctx, const volatile __u8 *if_mac)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *dst = (void *)(long)ctx->data;

	if ((void *)(dst + ETH_ALEN) > data_end)
		return 0;
	/* volatile reads: the knob is set by the loader, not the initializer */
	return *(__u32 *)dst == *(const volatile __u32 *)if_mac &&
	       *(__u16 *)(dst + 4) == *(const volatile __u16 *)(if_mac + 4);
}

static __always_inline int parse_l4(struct packet *pkt, void *l4, void *data, void *data_end)
{
	pkt->l4_off = l4 - data;

	if (pkt->key.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end || pkt->l4_len < sizeof(*th))
			return PARSE_MALFORMED;
		pkt->key.sport = th->source;
		pkt->key.dport = th->dest;
		pkt->tcp_flags = ((__u8 *)th)[13];
		pkt->tcp_data = pkt->l4_len > (__u32)(((__u8 *)th)[12] >> 4) * 4;
		pkt->tcp_seq = bpf_ntohl(th->seq);
		pkt->tcp_ack = bpf_ntohl(th->ack_seq);
		return PARSE_OK;
	}
	if (pkt->key.proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || pkt->l4_len < sizeof(*uh))
			return PARSE_MALFORMED;
		pkt->key.sport = uh->source;
		pkt->key.dport = uh->dest;
		return PARSE_OK;
	}
	return PARSE_OTHER_L4;
}

static __always_inline int parse_ipv4(struct packet *pkt, void *l3, void *data, void *data_end)
{
	struct iphdr *iph = l3;
	__u32 ihl, tot;

	if ((void *)(iph + 1) > data_end)
		return PARSE_MALFORMED;
	ihl = iph->ihl * 4;
	tot = bpf_ntohs(iph->tot_len);
	if (iph->version != 4 || ihl < sizeof(*iph) || tot < ihl)
		return PARSE_MALFORMED;
	if ((void *)iph + tot > data_end)
		return PARSE_MALFORMED; /* truncated; padding beyond tot is fine */
	pkt->key.family = XDPLB_AF_INET;
	pkt->key.proto = iph->protocol;
	pkt->key.src[0] = iph->saddr;
	pkt->key.dst[0] = iph->daddr;
	if (iph->frag_off & bpf_htons(0x3fff)) /* MF or offset */
		return PARSE_FRAG;
	pkt->l4_len = tot - ihl;
	return parse_l4(pkt, (void *)iph + ihl, data, data_end);
}

static __always_inline int parse_ipv6(struct packet *pkt, void *l3, void *data, void *data_end)
{
	struct ipv6hdr *ip6 = l3;
	void *cursor = ip6 + 1;
	__u32 plen;
	__u8 nexthdr;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	plen = bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || cursor + plen > data_end)
		return PARSE_MALFORMED;
	pkt->key.family = XDPLB_AF_INET6;
	__builtin_memcpy(pkt->key.src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->key.dst, &ip6->daddr, 16);
	nexthdr = ip6->nexthdr;

#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		__u8 *ext = cursor;
		__u32 len;

		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT)
			break;
		if ((void *)(ext + 8) > data_end)
			return PARSE_MALFORMED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			pkt->key.proto = ext[0];
			return PARSE_FRAG;
		}
		len = (ext[1] + 1) * 8;
		nexthdr = ext[0];
		cursor += len;
	}
	pkt->key.proto = nexthdr;
	if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	    nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT)
		return PARSE_MALFORMED; /* more extension headers than we skip */
	if (cursor > (void *)(ip6 + 1) + plen)
		return PARSE_MALFORMED;
	pkt->l4_len = plen - (cursor - (void *)(ip6 + 1));
	return parse_l4(pkt, cursor, data, data_end);
}

static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	__be16 proto;

	pkt->frame_len = data_end - data;
	pkt->ifindex = ctx->ingress_ifindex;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_IP;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = l3;

		if ((void *)(tag + 1) > data_end)
			return PARSE_NOT_IP;
		proto = tag->proto;
		l3 = tag + 1;
	}
	pkt->l3_off = l3 - data;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(pkt, l3, data, data_end);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(pkt, l3, data, data_end);
	return PARSE_NOT_IP;
}

#endif
