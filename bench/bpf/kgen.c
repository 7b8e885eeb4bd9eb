// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// The far side of bench/kcapacity.py's kernel-side load: `kgen_sink`, attached (native XDP) to
// the load generator's veth end behind the XDP wire, does in the kernel what a TURN client's and
// an echo peer's sockets would do with the injected traffic, so the generator's core only pays
// for the wire, not for sockets:
//
// - every ChannelData datagram the server sends from its UDP listener whose payload starts with
//   KGEN_MAGIC (bench/kgen_inject.c's frames coming back to their client) is counted and dropped;
// - every datagram the server sends from any other port (a relayed address, to the echo peer in
//   the generator's namespace) is sent straight back with MAC addresses, IP addresses and ports
//   swapped (XDP_TX: the wire's middle end forwards it to the server), as `turnkey load
//   --echo-peer`'s socket would answer; swapping leaves both checksums valid;
// - everything else passes: STUN answers and `turnkey load`'s own ChannelData to its sockets.
//
// Behind the wire every datagram arrives on its own (a veth whose peer runs XDP segments its GSO
// sends), so one frame is one datagram. kcapacity.py writes the server's address and listener
// port into `kgen_sink_cfg` per server; until then everything passes. Counters
// (`kgen_rx_counts`, per CPU): [0] injected datagrams back at their client, [1] datagrams echoed,
// [2] frames passed.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "bench.h"

// "TKKGEN01": the first 8 bytes of every injected payload.
#define KGEN_MAGIC 0x31304e45474b4b54ULL

struct frame {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	__be16 channel;
	__be16 length;
	__u64 magic;
} __attribute__((packed));

BENCH_MAPS(kgen_sink_cfg, kgen_rx_counts, 3)

static __always_inline int pass(void)
{
	count(2, 1);
	return XDP_PASS;
}

SEC("xdp")
int kgen_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_server *cfg = bpf_map_lookup_elem(&kgen_sink_cfg, &zero);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct frame *f = data;

	// (A datagram shorter than `struct frame` is neither injected nor worth echoing here.)
	if (!cfg || !cfg->server_ip || (void *)(f + 1) > end)
		return pass();
	if (f->eth.h_proto != bpf_htons(ETH_P_IP) || f->ip.ihl != 5 || f->ip.protocol != IPPROTO_UDP)
		return pass();
	if (f->ip.frag_off & bpf_htons(0x3fff) || f->ip.saddr != cfg->server_ip)
		return pass();
	if (f->udp.source != cfg->listener_port) {
		void *ip = data + sizeof(struct ethhdr);
		bench_swap(data, ip, ip + sizeof(struct iphdr));
		count(1, 1);
		return XDP_TX;
	}
	if ((bpf_ntohs(f->channel) & 0xc000) != 0x4000 || f->magic != KGEN_MAGIC)
		return pass();
	count(0, 1);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
