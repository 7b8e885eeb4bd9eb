// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// The benchmark's XDP wire (bench/compare.py --wire xdp, bench/vethnet.py create_wire): attached to
// both ends of a middle namespace between the load generator and the server, it hands every frame
// arriving on one middle end to the other with bpf_redirect, unchanged. A frame a middle end
// redirects reaches the far veth end (the server's or the generator's) as an xdp_frame, the way a
// NIC's driver hands a received frame to XDP: the far end's XDP program (if any) runs on it without
// the copy a veth makes of a socket's buffer before XDP, and without a program the frame becomes a
// socket buffer around the same page. Nothing is looked up or rewritten; MAC addresses are the
// outer ends' own (static neighbour entries), so the middle is transparent at layer 2.
//
// WIRE_TO is the ifindex of the other middle end (compiled once per end: -DWIRE_TO=N).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef WIRE_TO
#error "compile with -DWIRE_TO=<the other middle end's ifindex>"
#endif

SEC("xdp")
int wire(struct xdp_md *ctx)
{
	return bpf_redirect(WIRE_TO, 0);
}

char LICENSE[] SEC("license") = "GPL";
