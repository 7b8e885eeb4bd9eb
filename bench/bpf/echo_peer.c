// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// The benchmark's kernel echo peer (bench/compare.py --kernel-echo): a tc ingress program on the
// load generator's end of the veth. Every UDP datagram the TURN server under test relays to a peer
// in the generator's namespace (from the server's IPv4 address and any port but its listener) is
// sent straight back out of the same veth with MAC addresses, IP addresses and ports swapped, as
// `turnkey load --echo-peer`'s sockets would answer, without waking the generator: its core then
// only sends and receives at the clients, so it can offer more than the server under test relays.
// Everything else (STUN answers and ChannelData to the clients, ARP, ...) goes on untouched.
//
// It runs at tc, after the kernel built the socket buffer, not in XDP: a frame XDP_TX sends on a
// veth is only delivered when the far end runs an XDP program, which coturn's and user-space
// turnkey's end does not; through tc every server receives the echoes as a socket's datagrams
// would arrive, the same for all of them.
//
// compare.py writes the server's address and UDP listener port into `echo_cfg` for each server;
// until then nothing is reflected. `echo_counters` counts per CPU: [0] datagrams reflected, [1]
// their UDP payload bytes, [2] packets let through. Swapping source and destination leaves the
// IPv4 and UDP checksums valid (both sums are symmetric in the swapped fields; a partial checksum
// stays a valid partial one), so none is recomputed. IPv4 only (the benchmark's veth is IPv4).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "bench.h"

BENCH_MAPS(echo_cfg, echo_counters, 3)

static __always_inline int pass(void)
{
	count(2, 1);
	return TC_ACT_OK;
}

SEC("tc")
int bench_echo_peer(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct bench_server *cfg = bpf_map_lookup_elem(&echo_cfg, &zero);

	if (!cfg || !cfg->server_ip)
		return pass();
	if (bpf_skb_pull_data(skb, sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr)))
		return pass();

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > end)
		return pass();
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return pass();
	if (ip->frag_off & bpf_htons(0x3fff))
		return pass();
	if (ip->saddr != cfg->server_ip || udp->source == cfg->listener_port)
		return pass();

	bench_swap(eth, ip, udp);
	// A server's UDP GSO send arrives as one buffer of gso_segs datagrams (its UDP length is the
	// whole payload's plus one header); it is reflected whole and segmented where it is received.
	__u16 len = bpf_ntohs(udp->len);
	count(0, skb->gso_segs > 1 ? skb->gso_segs : 1);
	count(1, len > sizeof(*udp) ? len - sizeof(*udp) : 0);
	return bpf_redirect(skb->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
