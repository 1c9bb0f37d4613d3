// SPDX-License-Identifier: GPL-2.0
/* xdplb.bpf.c - the data plane: parse -> classify -> flow -> select ->
 * rewrite -> next hop, with counters and sampled traces. Details live in the
 * topic headers; struct layouts in abi.h. */
#include "encap.h"
#include "icmp.h"
#include "lb.h"
#include "maps.h"
#include "parse.h"
#include "select.h"
#include "stats.h"

/* Fragments carry no reliable ports: never rewritten; to a VIP address they
 * are passed to the stack or dropped by policy (knobs.frag_drop). */
static __always_inline int handle_fragment(const struct packet *pkt)
{
	if (!is_vip_addr(pkt))
		return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
	if (knobs.frag_drop)
		return verdict(pkt, ST_DROP_FRAGMENT, XDP_DROP);
	return verdict(pkt, ST_PASS_FRAGMENT, XDP_PASS);
}

/* Everything after parsing, on offsets only: a global function, so the
 * verifier walks it once rather than once per parser path. */
__attribute__((noinline)) int process_packet(struct xdp_md *ctx, struct packet *pkt)
{
	struct vip_info *vip;

	if (!pkt)
		return XDP_PASS;
	/* a reply to a NAT port first: a port-0 VIP on the SNAT address would
	 * otherwise take it for a new flow */
	if (is_nat_reply(pkt)) {
		int idx = nat_reply_find(&pkt->key);

		if (idx != FLOW_NONE)
			return reverse_nat(ctx, pkt, idx);
	}
	vip = pkt->maybe_vip ? lookup_vip(&pkt->key) : 0;
	if (vip)
		return balance(ctx, pkt, vip);
	return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
}

SEC("xdp")
int xdplb(struct xdp_md *ctx)
{
	struct packet pkt = {};
	int rc;

	if (knobs.mac_check && !is_for_us(ctx, knobs.if_mac)) {
		pkt.frame_len = ctx->data_end - ctx->data;
		return verdict(&pkt, ST_PASS_OTHER_MAC, XDP_PASS);
	}
	switch (parse_packet(ctx, &pkt)) {
	case PARSE_OK:
		break;
	case PARSE_NOT_IP:
		return verdict(&pkt, ST_PASS_NOT_IP, XDP_PASS);
	case PARSE_FRAG:
		return handle_fragment(&pkt);
	case PARSE_OTHER_L4:
		if ((pkt.key.proto == IPPROTO_ICMP || pkt.key.proto == IPPROTO_ICMPV6) &&
		    test_bit(runtime.addr_bits, addr_bit(pkt.key.dst)))
			return process_icmp(ctx, &pkt);
		return verdict(&pkt, ST_PASS_NOT_VIP, XDP_PASS);
	default:
		return verdict(&pkt, ST_PASS_MALFORMED, XDP_PASS);
	}
	pkt.maybe_vip = maybe_vip(&pkt);
	if (!pkt.maybe_vip && !is_nat_reply(&pkt))
		return verdict(&pkt, ST_PASS_NOT_VIP, XDP_PASS); /* the host's own traffic */
	rc = process_packet(ctx, &pkt);
	if (rc >= (int)TUNNEL_REQ) /* a tunnel VIP's: encapsulated here, on a shallow stack */
		return tunnel_forward(ctx, &pkt, rc);
	return rc;
}

/* Test-run only: writes bpf_jiffies64() into the frame, so the loader can
 * learn the kernel's HZ (timeouts are kept in jiffies). */
SEC("xdp")
int xdplb_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;

	if (data + sizeof(__u64) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	*(__u64 *)data = bpf_jiffies64();
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
