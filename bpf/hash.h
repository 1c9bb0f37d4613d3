/* SPDX-License-Identifier: GPL-2.0 */
/* hash.h - the flow hash (xxhash32-style rounds over the key's words).
 * Words are read as stored (network-order bytes, little-endian loads);
 * src/xdplb/model.py::hash_flow is the bit-exact reference. */
#ifndef XDPLB_HASH_H
#define XDPLB_HASH_H

#include "abi.h"

#define H_P1 0x9E3779B1u
#define H_P2 0x85EBCA77u
#define H_P3 0xC2B2AE3Du

static __always_inline __u32 rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 hash_round(__u32 h, __u32 w)
{
	return rotl32(h + w * H_P2, 13) * H_P1;
}

/* Rounds over the first address words, then the other twelve bytes of the
 * addresses only when one of them is not zero (IPv6): an IPv4 flow pays for
 * two address rounds, not eight. */
static __always_inline __u32 hash_tuple(const __u32 *src, const __u32 *dst, __u32 ports,
					 __u8 proto, __u32 seed)
{
	__u32 h = seed + H_P3;

	h = hash_round(h, src[0]);
	h = hash_round(h, dst[0]);
	if (src[1] | src[2] | src[3] | dst[1] | dst[2] | dst[3]) {
		h = hash_round(h, src[1]);
		h = hash_round(h, src[2]);
		h = hash_round(h, src[3]);
		h = hash_round(h, dst[1]);
		h = hash_round(h, dst[2]);
		h = hash_round(h, dst[3]);
	}
	h = hash_round(h, ports);
	h = hash_round(h, proto);
	h ^= h >> 15;
	h *= H_P2;
	h ^= h >> 13;
	h *= H_P3;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 hash_flow(const struct flow_key *k, __u32 seed)
{
	return hash_tuple(k->src, k->dst, (__u32)k->sport | ((__u32)k->dport << 16), k->proto,
			  seed);
}

/* Tag of a NAT flow's reply tuple, its port left out (the port is the set):
 * hash_flow of (backend, its port) -> (SNAT address, port 0). */
static __always_inline __u32 reply_tag(const __u32 *be, __u16 be_port, const __u32 *snat,
				       __u8 proto, __u32 seed)
{
	return hash_tuple(be, snat, be_port, proto, seed);
}

#endif
