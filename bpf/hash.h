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

static __always_inline __u32 hash_flow(const struct flow_key *k, __u32 seed)
{
	__u32 h = seed + H_P3;

	h = hash_round(h, k->src[0]);
	h = hash_round(h, k->src[1]);
	h = hash_round(h, k->src[2]);
	h = hash_round(h, k->src[3]);
	h = hash_round(h, k->dst[0]);
	h = hash_round(h, k->dst[1]);
	h = hash_round(h, k->dst[2]);
	h = hash_round(h, k->dst[3]);
	h = hash_round(h, (__u32)k->sport | ((__u32)k->dport << 16));
	h = hash_round(h, k->proto);
	h ^= h >> 15;
	h *= H_P2;
	h ^= h >> 13;
	h *= H_P3;
	h ^= h >> 16;
	return h;
}

#endif
