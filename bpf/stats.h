/* SPDX-License-Identifier: GPL-2.0 */
/* stats.h - per-CPU counters: global by reason, per VIP, per backend. */
#ifndef XDPLB_STATS_H
#define XDPLB_STATS_H

#include "maps.h"
#include "parse.h"

static __always_inline void count_stat(__u32 idx, __u32 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&stats, &idx);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_obj(void *map, __u32 id, __u32 bytes, int new_flow)
{
	struct obj_stats *s = bpf_map_lookup_elem(map, &id);

	if (s) {
		s->packets++;
		s->bytes += bytes;
		s->new_flows += new_flow;
	}
}

/* Count the packet under `stat` and return `action`. */
static __always_inline int verdict(const struct packet *pkt, __u32 stat, int action)
{
	count_stat(stat, pkt->frame_len);
	return action;
}

#endif
