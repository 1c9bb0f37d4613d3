/* SPDX-License-Identifier: GPL-2.0 */
/* maps.h - every map of the data plane, one line of purpose each.
 * max_entries here are defaults; the loader sizes maps at load time. */
#ifndef XDPLB_MAPS_H
#define XDPLB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"

/* vip_key -> vip_info: what is balanced. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vip_key);
	__type(value, struct vip_info);
} vips SEC(".maps");

/* vip_slot(key) -> the VIP: an array probe instead of a hash lookup for every
 * VIP packet; VIPs whose slot is taken stay in `vips` only (runtime.vip_spill). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIP_SLOTS);
	__type(key, __u32);
	__type(value, struct vip_slot);
} vip_slots SEC(".maps");

/* VIP address (vip_key with port 0, proto 0) -> number of VIPs on it:
 * lets fragments, which carry no ports, be recognised as ours. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vip_key);
	__type(value, __u32);
} vip_addrs SEC(".maps");

/* backend id -> backend: where flows go. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* Per-VIP Maglev table (slot -> backend id); swapped whole for atomic updates.
 * Mmapable: user space fills a new table with one memcpy, not 65537 map updates. */
struct ring_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65537);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
};

/* vip id -> that VIP's Maglev table. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__array(values, struct ring_inner);
} rings SEC(".maps");

/* vip id -> the Maglev table that VIP had before its last change (gue VIPs with
 * VIP_F_PREV_RING): the previous backend of a slot, sent as a hint (encap.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__array(values, struct ring_inner);
} prev_rings SEC(".maps");

/* Every tracked flow (flow.h): the NAT sets, one per NAT port, then the
 * conntrack sets of the other modes. Mmapable: user space counts and clears
 * entries without a syscall per entry. Sized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (32767 - 10000 + 1 + 262144) * FLOW_WAYS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct flow_entry);
} flows SEC(".maps");

/* egress interfaces of two-armed setups (key = ifindex). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* ifindex -> that interface's MAC: the source MAC of redirected frames. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct if_mac);
} if_macs SEC(".maps");

/* enum xdplb_stat -> per-CPU packets/bytes. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST__MAX);
	__type(key, __u32);
	__type(value, struct counter);
} stats SEC(".maps");

/* vip id -> per-CPU traffic of that VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct obj_stats);
} vip_stats SEC(".maps");

/* backend id -> per-CPU traffic of that backend. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct obj_stats);
} be_stats SEC(".maps");

/* per-CPU flood state: the non-SYN budget (flow.h::nonsyn_admit), the SYN
 * challenge's engagement and the RST answers' token bucket (guard.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flood_state);
} flood SEC(".maps");

/* client address -> jiffies64 it answered a SYN challenge (guard.h); bounded, LRU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct verified_key);
	__type(value, __u64);
} verified SEC(".maps");

/* sampled trace events (off unless runtime.trace_rate != 0). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Per-CPU budget of ICMP frag-needed/packet-too-big answers (encap.h). */
struct pmtu_budget {
	__u64 window; /* jiffies / hz of the second it counts */
	__u64 sent;
};

/* 0 -> this CPU's ICMP budget for the current second. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pmtu_budget);
} pmtu_budget SEC(".maps");

/* Load-time knobs and run-time switches (abi.h). */
const volatile struct lb_knobs knobs = {
	.hash_seed = 0x5eed1b0b,
	.nat_port_min = 10000,
	.nat_port_max = 32767,
	.frag_drop = 0,
	.csum_fixup = 1,
	.flow_format = FLOW_FORMAT,
	.ct_sets = 262144,
	.gue_port = 0xc017, /* 6080, network order */
	.pmtu_rate = 100,
};
volatile struct lb_runtime runtime;

#endif
