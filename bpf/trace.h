/* SPDX-License-Identifier: GPL-2.0 */
/* trace.h - sampled decision events to a ring buffer; one load and a branch
 * when off (runtime.trace_rate == 0, the default). Replaces bpf_printk. */
#ifndef XDPLB_TRACE_H
#define XDPLB_TRACE_H

#include "maps.h"
#include "parse.h"

static __always_inline void trace_decision(const struct packet *pkt, const __u32 *out_dst,
					   __u16 out_dport, __u32 vip_id, __u32 be_id,
					   __u32 verdict, __u32 stat)
{
	__u32 rate = runtime.trace_rate;
	struct trace_event *e;

	if (!rate)
		return;
	if (rate > 1 && bpf_get_prandom_u32() % rate)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->src, pkt->key.src, 16);
	__builtin_memcpy(e->dst, pkt->key.dst, 16);
	__builtin_memcpy(e->out_dst, out_dst, 16);
	e->sport = pkt->key.sport;
	e->dport = pkt->key.dport;
	e->out_dport = out_dport;
	e->proto = pkt->key.proto;
	e->family = pkt->key.family;
	e->backend_id = be_id;
	e->vip_id = vip_id;
	e->verdict = verdict;
	e->stat = stat;
	e->pkt_len = pkt->frame_len;
	bpf_ringbuf_submit(e, 0);
}

/* Never called: keeps struct trace_event in the object's BTF, so the Python
 * mirror can be checked against it (tests/bpf/test_abi.py). */
__attribute__((noinline)) int trace_event_btf(struct trace_event *e)
{
	return e != 0;
}

#endif
