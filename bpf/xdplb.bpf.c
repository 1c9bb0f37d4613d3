// SPDX-License-Identifier: GPL-2.0
/* xdplb.bpf.c - the data plane: parse -> classify -> flow -> select ->
 * rewrite -> next hop, with counters and sampled traces. Details live in the
 * topic headers; struct layouts in abi.h. */
#include "csum.h"
#include "flow.h"
#include "forward.h"
#include "hash.h"
#include "icmp.h"
#include "maps.h"
#include "parse.h"
#include "rewrite.h"
#include "select.h"
#include "stats.h"
#include "trace.h"

static __always_inline int verdict(const struct packet *pkt, __u32 stat, int action)
{
	count_stat(stat, pkt->frame_len);
	return action;
}

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

/* An ICMP error sent to a VIP about a client's flow: to the flow's backend. */
static __always_inline int icmp_to_backend(struct xdp_md *ctx, struct packet *pkt,
					   const struct icmp_err *e, const struct flow_key *fk,
					   const struct flow_state *fs)
{
	struct vip_info *vip = lookup_vip(fk);
	struct backend *be = lookup_backend(fs->backend_id);
	__u32 stat = ST_ICMP_FWD;
	int action;

	if (!vip || !be)
		return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
	if (vip->mode == XDPLB_MODE_NAT) {
		/* the embedded packet as the backend sent it: backend -> snat:port */
		struct flow_key in = {};

		__builtin_memcpy(in.src, be->addr, sizeof(in.src));
		__builtin_memcpy(in.dst, vip->snat_addr, sizeof(in.dst));
		in.sport = be->port ? be->port : fk->dport;
		in.dport = fs->nat_port;
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
					  const struct icmp_err *e, const struct nat_state *ns)
{
	struct flow_key in = {}; /* the embedded packet as the client sent it */
	__u32 stat = ST_ICMP_REPLY;
	int action;

	__builtin_memcpy(in.src, ns->client, sizeof(in.src));
	__builtin_memcpy(in.dst, ns->vip, sizeof(in.dst));
	in.sport = ns->client_port;
	in.dport = ns->vip_port;
	if (icmp_xlate(ctx, pkt, e, ns->vip, ns->client, &in))
		return verdict(pkt, ST_PASS_MALFORMED, XDP_PASS);
	action = xmit_mac(ctx, ns->client_mac, ns->client_ifindex, &stat);
	return verdict(pkt, stat, action);
}

/* ICMP to one of our addresses: an error about a balanced flow is sent on
 * to whoever owns that flow; anything else is the host's. A global function. */
__attribute__((noinline)) int process_icmp(struct xdp_md *ctx, struct packet *pkt)
{
	struct icmp_err e = {};
	struct flow_state *fs;
	struct nat_state *ns;
	struct flow_key fk;

	if (!pkt)
		return XDP_PASS;
	/* the error must be addressed to whoever sent the embedded packet: the VIP
	 * (its reply to a client) or the SNAT address (its packet to a backend) */
	if (parse_icmp_error(ctx, pkt, &e) || pkt->key.dst[0] != e.inner.src[0] ||
	    pkt->key.dst[1] != e.inner.src[1] || pkt->key.dst[2] != e.inner.src[2] ||
	    pkt->key.dst[3] != e.inner.src[3])
		return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
	reverse_tuple(&fk, &e.inner);
	fs = bpf_map_lookup_elem(&conntrack, &fk);
	if (fs)
		return icmp_to_backend(ctx, pkt, &e, &fk, fs);
	ns = bpf_map_lookup_elem(&nat_rev, &fk);
	if (ns)
		return icmp_to_client(ctx, pkt, &e, ns);
	return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
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
		struct nat_state *ns = bpf_map_lookup_elem(&nat_rev, &pkt->key);

		if (ns)
			return reverse_nat(ctx, pkt, ns);
	}
	vip = maybe_vip(pkt) ? lookup_vip(&pkt->key) : 0;
	if (vip)
		return balance(ctx, pkt, vip);
	return verdict(pkt, ST_PASS_NOT_VIP, XDP_PASS);
}

SEC("xdp")
int xdplb(struct xdp_md *ctx)
{
	struct packet pkt = {};

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
	if (!maybe_vip(&pkt) && !is_nat_reply(&pkt))
		return verdict(&pkt, ST_PASS_NOT_VIP, XDP_PASS); /* the host's own traffic */
	return process_packet(ctx, &pkt);
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
