/* SPDX-License-Identifier: GPL-2.0 */
/* select.h - VIP classification and Maglev backend selection. */
#ifndef XDPLB_SELECT_H
#define XDPLB_SELECT_H

#include "maps.h"
#include "parse.h"

/* Bit of an address in runtime.addr_bits: its words xor-folded to 16 bits
 * (mirrored by xdplb._bpf.abi.addr_bit). */
static __always_inline __u32 addr_bit(const __u32 *a)
{
	__u32 h = a[0] ^ a[1] ^ a[2] ^ a[3];

	return (h ^ (h >> 16)) & 0xffff;
}

static __always_inline int test_bit(const volatile __u64 *bits, __u32 bit)
{
	return (bits[(bit >> 6) & (PORT_BITS_WORDS - 1)] >> (bit & 63)) & 1;
}

/* Could this packet be for a VIP? Two loads from .bss (a filter with false
 * positives only), so traffic for the host skips the hash lookups. */
static __always_inline int maybe_vip(const struct packet *pkt)
{
	return test_bit(runtime.addr_bits, addr_bit(pkt->key.dst)) &&
	       (runtime.wildcard_vips || test_bit(runtime.port_bits, bpf_ntohs(pkt->key.dport)));
}

/* Slot of a VIP key in vip_slots (mirrored by xdplb._bpf.abi.vip_slot). */
static __always_inline __u32 vip_slot(const __u32 *addr, __u16 port, __u8 proto)
{
	__u32 h = addr[0] ^ addr[1] ^ addr[2] ^ addr[3] ^ (((__u32)port << 16) | proto);

	return (h * 0x9E3779B1u) >> 19; /* top 13 bits: 0 .. VIP_SLOTS - 1 */
}

static __always_inline struct vip_info *probe_vip(const struct flow_key *k, __u16 port)
{
	__u32 idx = vip_slot(k->dst, port, k->proto);
	struct vip_slot *s = bpf_map_lookup_elem(&vip_slots, &idx);

	if (s && s->key.port == port && s->key.proto == k->proto &&
	    s->key.family == k->family && s->key.addr[0] == k->dst[0] &&
	    s->key.addr[1] == k->dst[1] && s->key.addr[2] == k->dst[2] &&
	    s->key.addr[3] == k->dst[3])
		return &s->info;
	return 0;
}

/* The VIP a flow is addressed to: exact (address, port, protocol) first,
 * then the address's port-0 wildcard; the array cache first, the hash map
 * only when some VIP did not fit in it. */
static __always_inline struct vip_info *lookup_vip(const struct flow_key *k)
{
	struct vip_key vk = {};
	struct vip_info *vip;

	vip = probe_vip(k, k->dport);
	if (vip)
		return vip;
	__builtin_memcpy(vk.addr, k->dst, sizeof(vk.addr));
	vk.port = k->dport;
	vk.proto = k->proto;
	vk.family = k->family;
	if (runtime.vip_spill) { /* an exact VIP beats a wildcard, cached or not */
		vip = bpf_map_lookup_elem(&vips, &vk);
		if (vip)
			return vip;
	}
	if (!runtime.wildcard_vips)
		return 0;
	vip = probe_vip(k, 0);
	if (vip || !runtime.vip_spill)
		return vip;
	vk.port = 0;
	return bpf_map_lookup_elem(&vips, &vk);
}

/* Is the packet's destination address one of our VIP addresses? */
static __always_inline int is_vip_addr(const struct packet *pkt)
{
	struct vip_key vk = {};

	__builtin_memcpy(vk.addr, pkt->key.dst, sizeof(vk.addr));
	vk.family = pkt->key.family;
	return bpf_map_lookup_elem(&vip_addrs, &vk) != 0;
}

/* Backend id from the VIP's Maglev table, XDPLB_NO_BACKEND when empty. */
static __always_inline __u32 select_backend(const struct vip_info *vip, __u32 hash)
{
	__u32 vip_id = vip->vip_id;
	__u32 slot, *id;
	void *ring;

	if (!vip->ring_size)
		return XDPLB_NO_BACKEND;
	ring = bpf_map_lookup_elem(&rings, &vip_id);
	if (!ring)
		return XDPLB_NO_BACKEND;
	slot = hash % vip->ring_size;
	id = bpf_map_lookup_elem(ring, &slot);
	return id ? *id : XDPLB_NO_BACKEND;
}

static __always_inline struct backend *lookup_backend(__u32 id)
{
	struct backend *be = bpf_map_lookup_elem(&backends, &id);

	if (!be || !(be->flags & BE_F_ACTIVE))
		return 0;
	return be;
}

#endif
