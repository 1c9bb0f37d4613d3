/* SPDX-License-Identifier: GPL-2.0 */
/* abi.h - every struct and constant shared with user space.
 *
 * src/xdplb/_bpf/abi.py mirrors this file with ctypes; tests/bpf/test_abi.py
 * checks the mirror against the object's BTF. Addresses and ports are stored in
 * network byte order; an IPv4 address lives in addr[0] with addr[1..3] == 0.
 */
#ifndef XDPLB_ABI_H
#define XDPLB_ABI_H

#include <linux/types.h>

#define XDPLB_AF_INET 2
#define XDPLB_AF_INET6 10

#define XDPLB_NO_BACKEND 0xffffffffu /* empty Maglev slot */

/* vip_info.mode */
enum xdplb_mode {
	XDPLB_MODE_NAT = 0, /* full NAT: dst = backend, src = snat address + port */
	XDPLB_MODE_DSR = 1, /* L2 direct server return: only MACs change */
	XDPLB_MODE_IPIP = 2, /* tunnel: IPv4-in-IPv4 / IPv6-in-IPv6 to the backend (encap.h) */
	XDPLB_MODE_GUE = 3,  /* tunnel: GUE variant 1 (IP right after UDP) to the backend */
};

/* vip_stats counts what has no backend (drops); traffic a VIP forwards is the
 * sum of its backends' be_stats. */

/* vip_info.flags */
#define VIP_F_RESET_REMOVED (1u << 0) /* drop flows whose backend was removed */
#define VIP_F_UDP_STATELESS (1u << 1) /* DSR+UDP: select by hash, no conntrack */
#define VIP_F_PREV_RING (1u << 2) /* gue: prev_rings holds the table before the last change */

/* GUE variant 0 flags xdplb uses (private: first and second low bits of the flags). */
#define GUE_F_HINT 0x0001     /* a previous-backend address follows the GUE header */
#define GUE_F_REDIRECTED 0x0002 /* already given its second chance: never redirected again */

/* backend.flags */
#define BE_F_ACTIVE (1u << 0)    /* present in the config (weight 0 still active) */
#define BE_F_MAC (1u << 1)       /* mac is valid; otherwise bpf_fib_lookup */
#define BE_F_REDIRECT (1u << 2)  /* leave via ifindex (devmap) instead of XDP_TX */

/* flow_entry.flags (flow.h: the flow lifecycle) */
#define FLOW_F_CLOSING (1u << 0)   /* FIN or RST after the handshake: closing timeout */
#define FLOW_F_EMBRYONIC (1u << 1) /* TCP, not confirmed yet: syn timeout, evicted first */
#define FLOW_F_SYNACK (1u << 2)    /* NAT, embryonic: the backend's SYN-ACK seen (ack_check) */

/* flow_entry.set_flags (meaningful on the first way of a NAT set) */
#define SET_F_SPILL (1u << 0) /* a flow of this set's hash lives in the next set */

#define FLOW_WAYS 4 /* entries per set of the flows table */
#define CT_WAYS 8   /* entries per bucket of the conntrack region: two sets */
#define CT_PREFER 6 /* a conntrack flow goes to its first bucket while it has fewer live ones */

/* Version of what the flows table means (entry layout, flow hash, set rules):
 * a takeover keeps the table only when it is the same (knobs.flow_format). */
#ifndef FLOW_FORMAT /* (tests build objects of another format) */
#define FLOW_FORMAT 2
#endif

/* A VIP: (address, port, protocol); port 0 = every port of that protocol. */
struct vip_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct vip_info {
	__u32 vip_id;       /* index into rings and vip_stats */
	__u32 ring_size;    /* entries of this VIP's Maglev table */
	__u32 snat_addr[4]; /* NAT mode: source address towards backends */
	__u8 mode;          /* enum xdplb_mode */
	__u8 flags;         /* VIP_F_* */
	__u16 pad;
};

#define VIP_SLOTS 8192 /* direct-mapped VIP cache (vip_slots), a power of two */

/* A VIP in the direct-mapped cache; key.family == 0 marks an empty slot. */
struct vip_slot {
	struct vip_key key;
	struct vip_info info;
};

struct backend {
	__u32 addr[4];
	__u8 mac[6];
	__u16 port;  /* NAT mode: backend port, 0 = keep the VIP's port */
	__u8 family;
	__u8 flags;  /* BE_F_* */
	__u16 pad;
	__u32 ifindex; /* BE_F_REDIRECT: egress interface */
	__u32 vip_id;  /* the VIP this backend serves (counters are per backend) */
	__u32 snat_addr[4]; /* NAT mode: the VIP's source address towards it;
			     * ipip/gue: the outer source address (backend's family) */
};

/* MAC address of an interface frames are redirected out of (two-armed). */
struct if_mac {
	__u8 mac[6];
	__u16 pad;
};

/* A flow as seen on the wire (client -> VIP, or backend -> SNAT address:port).
 * Its first 38 bytes are laid out like a flow_entry's. */
struct flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* One tracked flow: a 64-byte entry (one cache line) of the `flows` table
 * (flow.h). A NAT flow's port is its set: nat_port_min + index / FLOW_WAYS. */
struct flow_entry {
	__u32 src[4];        /* client address */
	__u32 dst[4];        /* VIP address */
	__u16 sport;         /* client port */
	__u16 dport;         /* VIP port */
	__u8 proto;
	__u8 family;         /* 0: a way never used */
	__u8 flags;          /* FLOW_F_* */
	__u8 set_flags;      /* SET_F_*, kept when the way is reused */
	__u32 last_seen;     /* jiffies (low 32 bits); with reply_tag, one 8-byte word */
	__u32 reply_tag;     /* NAT: hash of the reply tuple (backend, its port, SNAT address) */
	__u32 backend_id;
	__u32 client_ifindex; /* NAT: interface the client's frames came in on */
	__u8 client_mac[6];  /* NAT: L2 source of the client's frames, where replies go */
	__u16 ack_check;     /* NAT, FLOW_F_SYNACK: low 16 bits of the backend's ISN + 1 */
};

/* Per-CPU counters. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

struct obj_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 pad;
};

/* Index of the global `stats` map: what happened to a packet. */
enum xdplb_stat {
	ST_FWD_NEW = 0,      /* forwarded, new flow */
	ST_FWD_EST,          /* forwarded, known flow */
	ST_REPLY,            /* NAT reply reverse-translated */
	ST_PASS_NOT_IP,      /* not IPv4/IPv6 (ARP, ...) */
	ST_PASS_NOT_VIP,     /* IP but not addressed to a VIP or a NAT reply */
	ST_PASS_FRAGMENT,    /* IP fragment to a VIP (policy pass) */
	ST_DROP_FRAGMENT,    /* IP fragment to a VIP (policy drop) */
	ST_PASS_MALFORMED,   /* bad ihl/length/truncated header */
	ST_DROP_NO_BACKEND,  /* VIP has no usable backend */
	ST_DROP_NAT_FULL,    /* no free NAT port after bounded tries */
	ST_DROP_REMOVED,     /* flow's backend removed, VIP policy reset */
	ST_RESELECT,         /* flow's backend removed, re-selected */
	ST_CSUM_FULL,        /* L4 checksum recomputed (CHECKSUM_PARTIAL frame) */
	ST_PASS_TOO_LONG,    /* partial checksum over a segment too long to finish */
	ST_DROP_NO_NEIGH,    /* fib lookup found no neighbour (the control plane resolves it) */
	ST_DROP_FIB,         /* fib lookup failed */
	ST_ICMP_FWD,         /* ICMP error forwarded to a flow's backend */
	ST_ICMP_REPLY,       /* ICMP error from a backend, reverse-translated */
	ST_CT_FULL,          /* conntrack set full: a live flow was evicted */
	ST_TX_ERROR,         /* redirect failed */
	ST_PASS_OTHER_MAC,   /* frame for another MAC (flooded or promiscuous): not ours */
	ST_DROP_NOT_SYN,     /* NAT: TCP without SYN and no flow (never creates one), unanswered */
	ST_EVICT_CLOSING,    /* a closing flow's way given to a new flow */
	ST_EVICT_EMBRYONIC,  /* an unconfirmed flow's way given to a new flow (flood protection) */
	ST_NONSYN_STATELESS, /* not NAT: a non-SYN miss beyond the per-CPU budget, no entry */
	ST_SYN_CHALLENGE,    /* NAT, flood protection engaged: a SYN answered with a challenge SYN-ACK */
	ST_RST_NOT_SYN,      /* NAT: no SYN, its flow just re-selected: answered with an RST */
	ST_RST_NAT_FULL,     /* NAT: a SYN that found no way answered with an RST|ACK */
	ST_SYN_VERIFIED,     /* NAT: a client's RST carried the challenge's cookie: address verified */
	ST_TUNNEL_NO_ROUTE,  /* ipip/gue: no route to the backend (FIB): to the stack */
	ST_PMTU_ICMP,        /* ipip/gue: too big once encapsulated: ICMP frag-needed/too-big sent */
	ST_PMTU_DROP,        /* ipip/gue: too big, no ICMP (rate limit, IPv4 without DF, VLAN) */
	ST_GUE_HINT,         /* gue: sent with the slot's previous backend as a hint */
	ST__MAX,
};

/* Load-time knobs (.rodata, `const volatile`): set by the loader. */
struct lb_knobs {
	__u32 hash_seed;
	__u16 nat_port_min; /* host order */
	__u16 nat_port_max; /* host order, inclusive */
	__u8 frag_drop;     /* 1: drop fragments to a VIP, 0: pass to the stack */
	__u8 csum_fixup;    /* 1: finish CHECKSUM_PARTIAL L4 checksums (veth) */
	__u8 flow_format;   /* FLOW_FORMAT of the object */
	__u8 mac_check;     /* 1: only frames to if_mac are ours; the rest pass untouched */
	__u32 ct_sets;      /* conntrack sets of the flows table, a power of two */
	__u8 if_mac[6];     /* the interface's MAC: what mac_check accepts, our source MAC */
	__u16 pad;
	__u16 gue_port;     /* network order: GUE destination port (mode gue) */
	__u16 pmtu_rate;    /* host order: ICMP frag-needed/too-big per second and CPU */
};

/* Per-CPU flood state (`flood` map, guard.h): the non-SYN budget (not NAT), the
 * SYN challenge's engagement (NAT) and the RST answers' rate limit. */
struct flood_state {
	__u64 window;        /* non-SYN budget: jiffies when the current one-second window began */
	__u64 used;          /* entries created in it */
	__u64 syn_window;    /* jiffies (64-bit) when the current SYN-counting second began */
	__u64 syns;          /* NAT SYN misses counted in it */
	__u64 engaged_until; /* jiffies (64-bit): the SYN challenge is engaged until then */
	__u64 rst_tat;       /* RST answers: the token bucket's next free time, jiffies x rst_rate */
};

/* lb_runtime.syn_challenge */
#define CHALLENGE_AUTO 0   /* engaged by a SYN rate or by table pressure (guard.h) */
#define CHALLENGE_OFF 1    /* never: every SYN may create a flow */
#define CHALLENGE_ALWAYS 2 /* every SYN from an unverified address is challenged */

/* A client address that answered a challenge (`verified` map). */
struct verified_key {
	__u32 addr[4];
	__u32 family;
};

#define PORT_BITS_WORDS 1024 /* 65536 bits: one per destination port */

/* Run-time state (.bss): written by user space after load and while running.
 * Times are in jiffies (bpf_jiffies64 is much cheaper than a ktime helper);
 * the loader learns HZ from the xdplb_clock program. */
struct lb_runtime {
	__u32 trace_rate;    /* 0 = off, N = one event in N packets */
	__u32 wildcard_vips; /* number of port-0 VIPs: 0 skips that lookup */
	__u32 nat_vips;      /* number of NAT VIPs: 0 skips the reply lookup */
	__u32 hz;            /* jiffies per second */
	__u32 vip_spill;     /* VIPs not in vip_slots (collisions): 0 skips the hash map */
	__u32 nonsyn_budget; /* not NAT: entries non-SYN misses may create, per CPU and second */
	__u64 tcp_timeout;   /* idle time after which a flow's entry may be reused (< 2^31) */
	__u64 closing_timeout;
	__u64 udp_timeout;
	__u64 refresh;       /* last_seen is rewritten at most this often */
	__u64 syn_timeout;   /* an embryonic (unconfirmed) TCP flow's timeout */
	__u32 age_shift;     /* victims compare idle times >> this (31: by rank and way only) */
	__u32 syn_challenge; /* CHALLENGE_* (NAT VIPs) */
	__u32 syn_challenge_rate; /* auto: engaged above this many NAT SYN misses per CPU and second */
	__u32 rst_rate;      /* RST answers per CPU and second (0: none, misses are only dropped) */
	__u64 challenge_hold;   /* jiffies engagement lasts after its last trigger */
	__u64 verified_timeout; /* jiffies a verified address stays verified */
	__u32 cookie_shift;  /* the cookie's time slot is jiffies64 >> this */
	__u32 pad;
	__u32 cookie_secret[4]; /* the cookie's key (random at load, kept by a takeover) */
	__u64 port_bits[PORT_BITS_WORDS]; /* dports used by some VIP (host order) */
	__u64 addr_bits[PORT_BITS_WORDS]; /* VIP addresses, by addr_bit() */
};

/* The backends' decapsulator (decap.bpf.c): index of its `decap_stats` map. */
enum decap_stat {
	DS_IPIP = 0,        /* IPIP stripped, inner packet to the stack */
	DS_GUE,             /* GUE (variant 0 or 1) stripped, inner packet to the stack */
	DS_PASS_NOT_TUNNEL, /* not IPIP nor UDP to the GUE port: untouched */
	DS_PASS_NOT_LOCAL,  /* inner destination not an address of this host: untouched */
	DS_PASS_MALFORMED,  /* truncated or inconsistent headers: untouched */
	DS_PASS_GUE_OTHER,  /* GUE control message or payload not IP: untouched */
	DS_SECOND_CHANCE,   /* no local connection: sent on to the hinted previous backend */
	DS__MAX,
};

#define DECAP_CACHE 16 /* per-CPU answers "is this inner destination local?" */

/* One cached FIB answer of the decapsulator. */
struct decap_local {
	__u32 addr[4];  /* inner destination (IPv4: addr[0], the rest 0) */
	__u64 stamp;    /* jiffies when the FIB answered; 0: never */
	__u32 local;    /* 1: decapsulate, 0: leave alone */
	__u32 pad;
};

/* The decapsulator's per-CPU state: counters (by enum decap_stat) and the cache. */
struct decap_state {
	struct counter stats[DS__MAX];
	struct decap_local cache[DECAP_CACHE];
};

/* Load-time knobs of the decapsulator (.rodata). */
struct decap_knobs {
	__u16 gue_port; /* network order */
	__u16 pad;
};

/* Trace event (ring buffer). */
struct trace_event {
	__u64 ts_ns;
	__u32 src[4];
	__u32 dst[4];
	__u32 out_dst[4]; /* destination after rewrite */
	__u16 sport;
	__u16 dport;
	__u16 out_dport;
	__u8 proto;
	__u8 family;
	__u32 backend_id; /* XDPLB_NO_BACKEND when none */
	__u32 vip_id;
	__u32 verdict;    /* XDP action */
	__u32 stat;       /* enum xdplb_stat */
	__u32 pkt_len;
};

#endif
