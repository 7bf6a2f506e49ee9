// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * LANrage XDP fast path (docs/xdp.md).
 *
 * Forwards established WireGuard sessions inside the kernel: a transport
 * message (type 4) arriving on the relay's UDP port whose
 * (source address, source port, receiver index) is in the route map is
 * rewritten to come from the relay and go to the peer's endpoint, then sent
 * back out of the interface it arrived on (XDP_TX). Everything else -
 * handshakes, LANrage control, STUN, misses, IP options, fragments, other
 * traffic - gets XDP_PASS so the kernel and the userspace relay handle it.
 *
 * Style: a thin entry function over lrg_try_forward(), which returns the one
 * counter slot (enum lrg_counter) that names the packet's verdict and reason.
 * Every packet access is preceded by its bounds check.
 *
 * Built only by the lanrage-ebpf crate's build script (feature `xdp`):
 *   clang -O2 -g -target bpf -c lanrage_xdp.c [-DLRG_PIN_MAPS]
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lanrage_xdp.h"

_Static_assert(sizeof(struct lrg_route_key) == 12, "route key has no holes");
_Static_assert(sizeof(struct lrg_route_value) == 16, "route value has no holes");
_Static_assert(sizeof(struct lrg_config) == 8, "config has no holes");

#ifndef AF_INET
#define AF_INET 2
#endif

/* IPv4 flags/fragment offset field (RFC 791 section 3.1). */
#define LRG_IP_MF 0x2000
#define LRG_IP_OFFSET 0x1fff

/*
 * WireGuard message header (WireGuard paper section 5.4): type, three zero
 * reserved bytes, then for transport data (type 4) the receiver index, a
 * 64-bit counter and the encrypted payload with its 16-byte Poly1305 tag.
 */
#define LRG_WG_INITIATION 1
#define LRG_WG_COOKIE_REPLY 3
#define LRG_WG_TRANSPORT 4
#define LRG_WG_TRANSPORT_MIN 32 /* 16-byte header + 16-byte tag (empty keepalive) */

/*
 * The TTL of forwarded packets. The relay terminates the UDP "connection" and
 * sends a new datagram, as the userspace relay's socket would (Linux default
 * ip_default_ttl = 64), rather than routing the old one.
 */
#define LRG_TTL 64

/* Pinned variant (the loader's pin_path): maps survive a userspace restart. */
#ifdef LRG_PIN_MAPS
#define LRG_PINNING __uint(pinning, LIBBPF_PIN_BY_NAME);
#else
#define LRG_PINNING
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* placeholder: the loader always sets max_routes */
	__type(key, struct lrg_route_key);
	__type(value, struct lrg_route_value);
	LRG_PINNING
} lrg_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LRG_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
	LRG_PINNING
} lrg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lrg_config);
	LRG_PINNING
} lrg_config SEC(".maps");

static __always_inline void lrg_count(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&lrg_counters, &slot);

	if (value)
		*value += 1; /* per-CPU slot: no atomics needed */
}

/* RFC 791 header checksum over the 20-byte option-less header (ihl == 5). */
static __always_inline __u16 lrg_ipv4_checksum(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += word[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void lrg_swap_macs(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

static __always_inline enum lrg_counter lrg_try_forward(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return LRG_PASS_MALFORMED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return LRG_PASS_NOT_IPV4;

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return LRG_PASS_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return LRG_PASS_MALFORMED;
	if (ip->ihl != 5)
		return LRG_PASS_IP_OPTIONS;
	if (ip->frag_off & bpf_htons(LRG_IP_MF | LRG_IP_OFFSET))
		return LRG_PASS_IP_FRAGMENT;
	if (ip->protocol != IPPROTO_UDP)
		return LRG_PASS_NOT_UDP;

	struct lrg_config *config = bpf_map_lookup_elem(&lrg_config, &zero);
	if (!config || config->relay_port == 0)
		return LRG_PASS_NO_CONFIG;

	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return LRG_PASS_MALFORMED;
	if (udp->dest != config->relay_port)
		return LRG_PASS_WRONG_PORT;
	if (config->relay_addr != 0 && ip->daddr != config->relay_addr)
		return LRG_PASS_WRONG_PORT;

	/*
	 * The IPv4 and UDP lengths must agree with each other and with the frame
	 * (which may carry Ethernet padding after the IP packet). Anything else
	 * goes to the kernel, which drops or trims it.
	 */
	__u32 ip_len = bpf_ntohs(ip->tot_len);
	__u32 udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) || ip_len != sizeof(*ip) + udp_len)
		return LRG_PASS_MALFORMED;
	if ((void *)ip + ip_len > data_end)
		return LRG_PASS_MALFORMED;
	__u32 payload_len = udp_len - sizeof(*udp);

	/* Demultiplex like the relay (proto/src/demux.rs): WireGuard first. */
	__u8 *wg = (void *)(udp + 1);
	if (payload_len < 4 || (void *)(wg + 4) > data_end)
		return LRG_PASS_NOT_TRANSPORT;
	if (wg[1] != 0 || wg[2] != 0 || wg[3] != 0)
		return LRG_PASS_NOT_TRANSPORT; /* "LRG!" control, STUN, other */
	if (wg[0] >= LRG_WG_INITIATION && wg[0] <= LRG_WG_COOKIE_REPLY)
		return LRG_PASS_HANDSHAKE;
	if (wg[0] != LRG_WG_TRANSPORT)
		return LRG_PASS_NOT_TRANSPORT;
	if (payload_len < LRG_WG_TRANSPORT_MIN)
		return LRG_PASS_SHORT;
	if ((void *)(wg + LRG_WG_TRANSPORT_MIN) > data_end)
		return LRG_PASS_MALFORMED;

	struct lrg_route_key key = {};
	key.src_addr = ip->saddr;
	key.src_port = udp->source;
	__builtin_memcpy(&key.receiver_index, wg + 4, sizeof(key.receiver_index));

	struct lrg_route_value *route = bpf_map_lookup_elem(&lrg_routes, &key);
	if (!route)
		return LRG_PASS_ROUTE_MISS;

	/* Reply from the address the packet was sent to unless one is configured. */
	__u32 src_addr = config->relay_addr ? config->relay_addr : ip->daddr;
	__u16 src_port = udp->dest;
	__u32 dst_addr = route->dst_addr;
	__u16 dst_port = route->dst_port;

	/*
	 * Next-hop MACs for the rewritten packet. BPF_FIB_LOOKUP_OUTPUT looks the
	 * route up as for a locally generated packet (the relay is the sender;
	 * this also skips the ingress device's forwarding sysctl), restricted to
	 * the ingress interface because XDP_TX can only send out of it.
	 */
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.tot_len = ip_len;
	fib.ipv4_src = src_addr;
	fib.ipv4_dst = dst_addr;
	fib.ifindex = ctx->ingress_ifindex;
	long fib_rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);

	ip->saddr = src_addr;
	ip->daddr = dst_addr;
	ip->ttl = LRG_TTL;
	ip->check = 0;
	ip->check = lrg_ipv4_checksum(ip);
	udp->source = src_port;
	udp->dest = dst_port;
	/*
	 * Zero = "no checksum" is legal for UDP over IPv4 (RFC 768) and the
	 * payload is authenticated end to end by WireGuard's Poly1305 tag.
	 * An incremental update would be wrong for partial checksums left by
	 * veth TX offload (shared/LAB.md), so the checksum is dropped, not patched.
	 */
	udp->check = 0;

	/* A plain store: one flow is served by one CPU, and a torn read is impossible for aligned u64. */
	route->last_seen_ns = bpf_ktime_get_ns();

	if (fib_rc == BPF_FIB_LKUP_RET_SUCCESS && fib.ifindex == ctx->ingress_ifindex) {
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
		return LRG_TX;
	}
	/*
	 * No route or no neighbour entry yet: send it back to whoever handed it to
	 * us (on a VPS, the upstream router). Counted so operators can see it.
	 */
	lrg_swap_macs(eth);
	return LRG_TX_FIB_FALLBACK;
}

SEC("xdp")
int lanrage_xdp(struct xdp_md *ctx)
{
	enum lrg_counter slot = lrg_try_forward(ctx);

	lrg_count(slot);
	return (slot == LRG_TX || slot == LRG_TX_FIB_FALLBACK) ? XDP_TX : XDP_PASS;
}

/* GPL-compatible: bpf_fib_lookup is a GPL-only helper. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";
