/* SPDX-License-Identifier: GPL-2.0 */
/* csum.h - Internet checksums. Sums are over raw memory words (byte-order
 * independent one's complement arithmetic), so no swapping is needed.
 *
 * Normal path: RFC 1624 incremental update, cost independent of packet size.
 * veth path: a frame sent by a local stack with TX checksum offload carries
 * CHECKSUM_PARTIAL: its L4 field holds only the folded pseudo-header sum and
 * XDP loses the flag that says "finish me". We detect that form and finish the
 * checksum over the segment with bpf_csum_diff in power-of-two chunks. */
#ifndef XDPLB_CSUM_H
#define XDPLB_CSUM_H

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define CSUM_MAX_CHUNKS 16 /* 16 x 512 B: longest segment we finish (8 KiB) */

/* Fold a 64-bit one's complement sum to 16 bits (not inverted). */
static __always_inline __u16 csum_fold64(__u64 s)
{
	s = (s & 0xffffffffull) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline __u64 csum_words(const __u32 *w, int n)
{
	__u64 s = 0;

#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < n)
			s += w[i];
	return s;
}

/* Sum of ~x over the words of x: what "removing" x from a checksum adds. */
static __always_inline __u64 csum_words_neg(const __u32 *w, int n)
{
	__u64 s = 0;

#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < n)
			s += (__u32)~w[i];
	return s;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), `delta` = sum(~m) + sum(m'). */
static __always_inline __u16 csum_replace(__u16 check, __u64 delta)
{
	return (__u16)~csum_fold64((__u16)~check + delta);
}

/* Pseudo-header sum (IPv4 and IPv6 reduce to the same words). */
static __always_inline __u64 csum_pseudo(const __u32 *src, const __u32 *dst, int nwords,
					 __u8 proto, __u32 l4_len)
{
	return csum_words(src, nwords) + csum_words(dst, nwords) + bpf_htons((__u16)proto) +
	       bpf_htons((__u16)l4_len);
}

/* Sum of the `len` bytes at offset `off` of the frame (an even offset), or -1
 * if out of bounds or longer than CSUM_MAX_CHUNKS * 512. No per-byte loop.
 * A global function: the verifier checks it once, not at every call site. */
__attribute__((noinline)) __s64 csum_frame(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *p = (void *)(long)ctx->data;
	__s64 s = 0;
	__u32 i;

	if (len > CSUM_MAX_CHUNKS * 512)
		return -1;
	p += off & 0x1ff; /* callers pass offsets < 512; the mask is for the verifier */
	for (i = 0; i < CSUM_MAX_CHUNKS && len >= 512; i++) {
		if (p + 512 > data_end)
			return -1;
		s = bpf_csum_diff(0, 0, p, 512, s);
		p += 512;
		len -= 512;
	}
#define CSUM_CHUNK(n)                                        \
	if (len & (n)) {                                     \
		if (p + (n) > data_end)                      \
			return -1;                           \
		s = bpf_csum_diff(0, 0, p, (n), s);          \
		p += (n);                                    \
	}
	CSUM_CHUNK(256)
	CSUM_CHUNK(128)
	CSUM_CHUNK(64)
	CSUM_CHUNK(32)
	CSUM_CHUNK(16)
	CSUM_CHUNK(8)
	CSUM_CHUNK(4)
#undef CSUM_CHUNK
	if (len & 2) {
		if (p + 2 > data_end)
			return -1;
		s += *(__u16 *)p;
		p += 2;
	}
	if (len & 1) {
		if (p + 1 > data_end)
			return -1;
		s += *(__u8 *)p; /* high byte of a zero-padded word, as stored */
	}
	return s;
}

#endif
