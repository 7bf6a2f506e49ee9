/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * LANrage XDP fast path: the ONE definition of every layout shared between the
 * XDP program (lanrage_xdp.c) and its Rust loader (ebpf/src/layout.rs mirrors
 * these with #[repr(C)] types; ebpf/tests/layout.rs checks both agree).
 *
 * Byte order: addresses and ports are stored in network byte order, exactly
 * as they appear in the IPv4/UDP headers, so the program compares and copies
 * them without swapping. The WireGuard receiver index is stored as the 4 wire
 * bytes read as a native u32 (WireGuard indices are little-endian on the wire,
 * so on a little-endian host this is the index's value).
 *
 * Every struct has explicit padding fields and no implicit holes: hash map
 * keys are compared bytewise, so padding must be named (and zeroed) on both
 * sides.
 */
#ifndef LANRAGE_XDP_H
#define LANRAGE_XDP_H

#include <linux/types.h>

/* Map names as the loader looks them up (at most 15 characters: BPF_OBJ_NAME_LEN). */
#define LRG_MAP_ROUTES "lrg_routes"
#define LRG_MAP_COUNTERS "lrg_counters"
#define LRG_MAP_CONFIG "lrg_config"

/* Route map key: one established WireGuard session seen from one source. */
struct lrg_route_key {
	__u32 src_addr;       /* IPv4 source address, network byte order */
	__u16 src_port;       /* UDP source port, network byte order */
	__u16 _pad;           /* always zero */
	__u32 receiver_index; /* WireGuard receiver index, wire bytes as native u32 */
};

/* Route map value: where packets of that session go. */
struct lrg_route_value {
	__u32 dst_addr;     /* peer IPv4 address, network byte order */
	__u16 dst_port;     /* peer UDP port, network byte order */
	__u16 _pad;         /* always zero */
	__u64 last_seen_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last forward */
};

/* The single entry (index 0) of the config array. */
struct lrg_config {
	__u32 relay_addr; /* network order; 0 = any: reply from the packet's own destination */
	__u16 relay_port; /* network order; 0 = not configured: everything passes */
	__u16 _pad;       /* always zero */
};

/*
 * Per-CPU counters, one slot per verdict and reason. Every packet the program
 * sees increments exactly one slot.
 */
enum lrg_counter {
	LRG_TX = 0,                 /* forwarded with XDP_TX, MACs from bpf_fib_lookup */
	LRG_TX_FIB_FALLBACK = 1,    /* forwarded with XDP_TX, MACs swapped (fib lookup failed) */
	LRG_PASS_NOT_IPV4 = 2,      /* not Ethernet + IPv4 (IPv6, ARP, VLAN, ...) */
	LRG_PASS_IP_OPTIONS = 3,    /* IPv4 header with options (ihl > 5) */
	LRG_PASS_IP_FRAGMENT = 4,   /* IPv4 fragment (MF set or offset != 0) */
	LRG_PASS_NOT_UDP = 5,       /* IPv4 but not UDP */
	LRG_PASS_WRONG_PORT = 6,    /* UDP not to the relay port (or not to the relay address) */
	LRG_PASS_HANDSHAKE = 7,     /* WireGuard initiation/response/cookie reply (types 1-3) */
	LRG_PASS_NOT_TRANSPORT = 8, /* control ("LRG!"), STUN, anything else not WireGuard */
	LRG_PASS_SHORT = 9,         /* WireGuard transport type but shorter than 32 bytes */
	LRG_PASS_ROUTE_MISS = 10,   /* transport message with no route */
	LRG_PASS_NO_CONFIG = 11,    /* relay port not configured yet */
	LRG_PASS_MALFORMED = 12,    /* truncated frame or inconsistent IPv4/UDP lengths */
	LRG_COUNTER_MAX = 13,       /* number of slots, not a reason */
};

#endif /* LANRAGE_XDP_H */
