// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// What the benchmark's far-side programs share (bench/bpf/echo_peer.c at tc, bench/bpf/kgen.c in
// XDP): which server they serve, per-CPU counters, and the echo peer's answer.

#ifndef TURNKEY_BENCH_H
#define TURNKEY_BENCH_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

// The server under test, written by the benchmark per server (a one-entry array map); until
// then (server_ip 0) the programs leave every packet alone.
struct bench_server {
	__be32 server_ip;     // the server's IPv4 address
	__be16 listener_port; // its UDP listener: what it sends from there goes to the clients
	__u16 pad;
};

// A one-entry map NAME of struct bench_server, a per-CPU array COUNTERS of N u64 counters, and
// count(idx, n) adding to one of them.
#define BENCH_MAPS(NAME, COUNTERS, N)                                                               \
	struct {                                                                                    \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                                   \
		__uint(max_entries, 1);                                                             \
		__type(key, __u32);                                                                 \
		__type(value, struct bench_server);                                                 \
	} NAME SEC(".maps");                                                                        \
	struct {                                                                                    \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                            \
		__uint(max_entries, N);                                                             \
		__type(key, __u32);                                                                 \
		__type(value, __u64);                                                               \
	} COUNTERS SEC(".maps");                                                                    \
	static __always_inline void count(__u32 idx, __u64 n)                                       \
	{                                                                                           \
		__u64 *c = bpf_map_lookup_elem(&COUNTERS, &idx);                                    \
		if (c)                                                                              \
			*c += n;                                                                    \
	}

// The echo peer's answer, in place: MAC addresses, IPv4 addresses and UDP ports swapped. Both
// checksums stay valid (each sum is symmetric in the swapped fields; a partial checksum stays a
// valid partial one), so none is recomputed.
static __always_inline void bench_swap(struct ethhdr *eth, struct iphdr *ip, struct udphdr *udp)
{
	unsigned char mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__be32 addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	__be16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
}

#endif
