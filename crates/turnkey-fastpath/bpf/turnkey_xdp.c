// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// turnkey's XDP fast path: ChannelData on bound channels relayed in the kernel (RFC 8656 §12).
//
// client -> listener, ChannelData on a bound channel: the 4-byte header is stripped and the datagram
// leaves from the allocation's relayed address to the peer. peer -> relayed address from a peer with
// a bound channel: the header is prepended and the datagram leaves from the listener to the client.
// Hairpin (the peer is another allocation's relayed address) is relayed in one step when the other
// side has a channel bound too. Every packet this program is unsure of is passed to the kernel stack
// (XDP_PASS) and counted by reason; nothing is ever dropped. User space (crates/turnkey-fastpath/src)
// owns every decision: it writes the maps; each entry carries its deadline (CLOCK_MONOTONIC ns,
// bpf_ktime_get_ns), checked here so that a late sweep cannot extend it.
//
// The structs below are mirrored in src/maps.rs (#[repr(C)], same sizes): change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10
#define FAM_V4 4
#define FAM_V6 6
#define RELAY_TTL 64
#define MAX_ENTRIES 65536
#define MAX_ALLOCS 65536        // allocation slots: fp_allocs / fp_alloc_stats are arrays indexed by slot
#define CHANNEL_HDR 4

// Pass reasons and actions: the index into `fp_counters` (mirrored by PassReason in src/maps.rs).
enum fp_counter {
	PASS_NOT_IP = 0,        // not IPv4/IPv6 over Ethernet (ARP, VLAN tags, ...)
	PASS_FRAGMENT,          // an IP fragment
	PASS_IP_OPTIONS,        // IPv4 options or IPv6 extension headers
	PASS_NOT_UDP,           // not UDP
	PASS_NOT_RELAY_ADDR,    // UDP neither to a listener nor to a relayed address
	PASS_LENGTH,            // IP / UDP / ChannelData lengths disagree
	PASS_STUN,              // a STUN message to a listener (requests, refreshes, ...)
	PASS_SEND_INDICATION,   // a Send indication
	PASS_NOT_CHANNEL_DATA,  // neither STUN nor ChannelData (first two bits 10 or 11)
	PASS_PADDED,            // trailing bytes that are not padding to a multiple of 4: user space's
	PASS_NO_CHANNEL,        // ChannelData with no kernel entry for its 5-tuple and channel
	PASS_NO_PEER,           // UDP to a relayed address from a peer with no kernel entry
	PASS_EXPIRED,           // the entry's (or its allocation's) deadline has passed
	PASS_NO_ALLOCATION,     // the entry's allocation has no kernel entry
	PASS_OVER_BUDGET,       // the allocation's byte budget is spent until user space refills it
	PASS_HAIRPIN_UNBOUND,   // the peer is a relayed address here without a channel back
	PASS_NO_ROUTE,          // bpf_fib_lookup: no unicast route (or a local destination)
	PASS_NO_NEIGH,          // bpf_fib_lookup: next hop not resolved yet (the stack resolves it)
	PASS_MTU,               // the result would exceed the egress MTU
	PASS_NO_TX_PORT,        // the egress interface is not one the fast path may redirect to
	PASS_ADJUST_FAILED,     // bpf_xdp_adjust_head/tail refused
	PASS_FORWARDING_OFF,    // bpf_fib_lookup needs forwarding on the ingress interface
	PASS_REASONS,           // (count of pass reasons)
	ACT_TX = PASS_REASONS,  // relayed back out of the ingress interface
	ACT_REDIRECT,           // relayed out of another interface
	FP_COUNTERS,
};

struct fp_chan_key {            // client -> listener, one bound channel
	__u8 client[16];        // IPv4 in the first 4 bytes, the rest zero
	__u8 listener[16];
	__be16 client_port;
	__be16 listener_port;
	__be16 channel;
	__u8 family;            // FAM_V4 / FAM_V6
	__u8 pad;
};

#define FP_CHAN_HAIRPIN 1       // the peer's IP is one of this relay's relayed IPs (user space knows)

struct fp_chan_val {            // where its data leaves to
	__u8 relayed[16];
	__u8 peer[16];
	__be16 relayed_port;
	__be16 peer_port;
	__u32 alloc;            // the allocation's slot
	__u64 deadline_ns;
	__u32 flags;            // FP_CHAN_HAIRPIN
	__u32 pad;
};

struct fp_peer_key {            // peer -> relayed address, the peer has a bound channel
	__u8 peer[16];
	__u8 relayed[16];
	__be16 peer_port;
	__be16 relayed_port;
	__u8 family;
	__u8 pad[3];
};

struct fp_peer_val {
	__u8 client[16];
	__u8 listener[16];
	__be16 client_port;
	__be16 listener_port;
	__be16 channel;
	__u16 pad;
	__u32 alloc;
	__u32 pad2;
	__u64 deadline_ns;
};

#define FP_ALLOC_LIMITED 1
#define FP_ALLOC_LIVE 2         // the slot holds a live allocation (a removed one is all zeros)

struct fp_alloc_val {
	__u64 deadline_ns;
	__s64 budget;           // bytes left when FP_ALLOC_LIMITED (refilled by user space)
	__u32 flags;
	__u32 pad;
};

struct fp_alloc_stats {         // per CPU; bytes are application data (ChannelData payload)
	__u64 to_peer_packets;
	__u64 to_peer_bytes;
	__u64 to_client_packets;
	__u64 to_client_bytes;
};

struct fp_addr_key {            // a listener (port set) or a relayed IP (port 0)
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct fp_chan_key);
	__type(value, struct fp_chan_val);
} fp_channels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct fp_peer_key);
	__type(value, struct fp_peer_val);
} fp_peers SEC(".maps");

// Arrays indexed by the allocation's slot (user space hands out dense slots): their lookups are
// inlined by the JIT, where a hash lookup hashes and compares the key.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ALLOCS);
	__type(key, __u32);
	__type(value, struct fp_alloc_val);
} fp_allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_ALLOCS);
	__type(key, __u32);
	__type(value, struct fp_alloc_stats);
} fp_alloc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct fp_addr_key);
	__type(value, __u32);
} fp_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} fp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} fp_tx_ports SEC(".maps");

// What leaves: addresses, ports, the ChannelData header to strip and/or add, whose counters move.
struct plan {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__be16 strip_chan;      // the header removed (network order), when strip
	__be16 add_chan;        // the header added, when add
	__u16 data_len;         // ChannelData payload length (host order)
	__u8 strip;
	__u8 add;
	__u8 trim;              // padding bytes (1-3) trimmed from the end, when strip (RFC 8656 §12.5)
	__u8 pad0[3];
	__be32 tail;            // the packet's last 4 bytes as they arrived, when trim
	__be32 tail_kept;       // the same with the padding bytes zeroed (what the checksum keeps)
	__u32 to_peer_alloc;
	__u32 to_client_alloc;
	struct fp_alloc_val *to_peer_a;   // the allocations charged in finish, as alloc_check found
	struct fp_alloc_val *to_client_a; // them (NULL: that direction's counters do not move)
};

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&fp_counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline int pass(__u32 reason)
{
	count(reason);
	return XDP_PASS;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 16);
}

// The allocation may carry `len` more bytes: it exists, is not past its deadline, has budget. `*out`
// is its entry, charged by alloc_charge when the packet leaves (one lookup for both).
static __always_inline __u32 alloc_check(__u32 alloc, __u64 now, __u32 len, struct fp_alloc_val **out)
{
	struct fp_alloc_val *a = bpf_map_lookup_elem(&fp_allocs, &alloc);
	if (!a || !(a->flags & FP_ALLOC_LIVE))
		return PASS_NO_ALLOCATION;
	if (now >= a->deadline_ns)
		return PASS_EXPIRED;
	if ((a->flags & FP_ALLOC_LIMITED) && a->budget < (__s64)len)
		return PASS_OVER_BUDGET;
	*out = a;
	return 0;
}

static __always_inline void alloc_charge(struct fp_alloc_val *a, __u32 alloc, __u32 len, int to_peer)
{
	if (a->flags & FP_ALLOC_LIMITED)
		__sync_fetch_and_add(&a->budget, -(__s64)len);
	struct fp_alloc_stats *s = bpf_map_lookup_elem(&fp_alloc_stats, &alloc);
	if (!s)
		return;
	if (to_peer) {
		s->to_peer_packets += 1;
		s->to_peer_bytes += len;
	} else {
		s->to_client_packets += 1;
		s->to_client_bytes += len;
	}
}

static __always_inline int is_addr(const __u8 *addr, __be16 port, __u8 family)
{
	struct fp_addr_key k = {};
	copy16(k.addr, addr);
	k.port = port;
	k.family = family;
	return bpf_map_lookup_elem(&fp_addrs, &k) != NULL;
}

static __always_inline struct fp_chan_val *chan_lookup(__u8 family, const __u8 *src, const __u8 *dst, __be16 sport,
							__be16 dport, const __u8 *payload)
{
	struct fp_chan_key ck = {};
	copy16(ck.client, src);
	copy16(ck.listener, dst);
	ck.client_port = sport;
	ck.listener_port = dport;
	__builtin_memcpy(&ck.channel, payload, 2);
	ck.family = family;
	return bpf_map_lookup_elem(&fp_channels, &ck);
}

// client -> listener. `cv` is the channel's entry when decide's probe found it; `probed`: the probe
// looked its key up (a miss then needs no second lookup).
static __always_inline __u32 client_to_peer(struct xdp_md *ctx, __u8 family, const __u8 *src, const __u8 *dst,
					    __be16 sport, __be16 dport, const __u8 *payload, __u32 plen,
					    struct fp_chan_val *cv, int probed, struct plan *p)
{
	void *end = (void *)(long)ctx->data_end;
	if (plen < CHANNEL_HDR)
		return PASS_LENGTH;
	if ((void *)(payload + CHANNEL_HDR) > end)
		return PASS_LENGTH;
	__u8 b0 = payload[0];
	if ((b0 & 0xc0) == 0) {
		if (payload[0] == 0x00 && payload[1] == 0x16)
			return PASS_SEND_INDICATION;
		return PASS_STUN;
	}
	// 0x4000-0x4FFF (RFC 8656), 0x5000-0x7FFF for RFC 5766 clients when the relay allows
	// them: only channels user space bound have entries.
	if ((b0 & 0xc0) != 0x40)
		return PASS_NOT_CHANNEL_DATA;
	__u16 dlen = ((__u16)payload[2] << 8) | payload[3];
	if (plen - CHANNEL_HDR != dlen) {
		// Over UDP the message may be padded to a multiple of 4 (RFC 8656 §12.5): the padding
		// is trimmed with the header. Other trailing bytes (1-3 but not to a multiple of 4)
		// go to user space, which ignores them too.
		if (plen - CHANNEL_HDR < dlen || plen - CHANNEL_HDR > (((__u32)dlen + 3) & ~3u))
			return PASS_LENGTH;
		if (plen - CHANNEL_HDR != (((__u32)dlen + 3) & ~3u))
			return PASS_PADDED;
		// The padded message ends at a multiple of 4 from the UDP payload's start, an even
		// offset in the checksummed data: its last 4 bytes are two whole checksum words.
		__u32 l4 = sizeof(struct ethhdr) + sizeof(struct udphdr) +
			   (family == FAM_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr));
		// (bpf_xdp_load_bytes, Linux 5.18+: a direct read at this variable offset, its bounds
		// checked, is compiled by clang into a form the verifier rejects.)
		__u8 kept[4];
		if (bpf_xdp_load_bytes(ctx, l4 + plen - 4, kept, 4))
			return PASS_LENGTH;
		__u8 trim = plen - CHANNEL_HDR - dlen;
		__builtin_memcpy(&p->tail, kept, 4);
		if (trim >= 3)
			kept[1] = 0;
		if (trim >= 2)
			kept[2] = 0;
		kept[3] = 0;
		__builtin_memcpy(&p->tail_kept, kept, 4);
		p->trim = trim;
	}
	if (!cv) {
		if (probed)
			return PASS_NO_CHANNEL;
		cv = chan_lookup(family, src, dst, sport, dport, payload);
		if (!cv)
			return PASS_NO_CHANNEL;
	}
	__u64 now = bpf_ktime_get_ns(); // (read only for packets with an entry)
	if (now >= cv->deadline_ns)
		return PASS_EXPIRED;
	__u32 r = alloc_check(cv->alloc, now, dlen, &p->to_peer_a);
	if (r)
		return r;
	p->strip = 1;
	__builtin_memcpy(&p->strip_chan, payload, 2);
	p->data_len = dlen;
	p->to_peer_alloc = cv->alloc;

	// Hairpin: the peer is another allocation's relayed address here. User space marks the
	// channels whose peer is on one of this relay's relayed IPs, so the common case looks
	// nothing more up.
	if (cv->flags & FP_CHAN_HAIRPIN) {
		struct fp_peer_key hk = {};
		copy16(hk.peer, cv->relayed);
		copy16(hk.relayed, cv->peer);
		hk.peer_port = cv->relayed_port;
		hk.relayed_port = cv->peer_port;
		hk.family = family;
		struct fp_peer_val *hv = bpf_map_lookup_elem(&fp_peers, &hk);
		if (!hv)
			return PASS_HAIRPIN_UNBOUND;
		if (now >= hv->deadline_ns)
			return PASS_EXPIRED;
		r = alloc_check(hv->alloc, now, dlen, &p->to_client_a);
		if (r)
			return r;
		copy16(p->src, hv->listener);
		copy16(p->dst, hv->client);
		p->sport = hv->listener_port;
		p->dport = hv->client_port;
		p->add = 1;
		p->add_chan = hv->channel;
		p->to_client_alloc = hv->alloc;
		return 0;
	}
	copy16(p->src, cv->relayed);
	copy16(p->dst, cv->peer);
	p->sport = cv->relayed_port;
	p->dport = cv->peer_port;
	return 0;
}

// peer -> relayed address, the peer's entry found.
static __always_inline __u32 peer_to_client(struct fp_peer_val *pv, __u32 plen, struct plan *p)
{
	__u64 now = bpf_ktime_get_ns();
	if (now >= pv->deadline_ns)
		return PASS_EXPIRED;
	if (plen > 0xffff)
		return PASS_LENGTH;
	__u32 r = alloc_check(pv->alloc, now, plen, &p->to_client_a);
	if (r)
		return r;
	copy16(p->src, pv->listener);
	copy16(p->dst, pv->client);
	p->sport = pv->listener_port;
	p->dport = pv->client_port;
	p->add = 1;
	p->add_chan = pv->channel;
	p->data_len = plen;
	p->to_client_alloc = pv->alloc;
	return 0;
}

// The decision: 0 and a filled plan, or a pass reason. `payload` is the UDP payload in the packet,
// `plen` its length (already checked against the IP and UDP lengths).
//
// The two relayed cases are found by their own entries first: a channel's key names a listener and
// a peer entry's key a relayed address (user space writes no other), so a hit needs no address
// lookup. ChannelData on a bound channel costs one lookup, a peer's datagram two (its relay IP,
// then its entry: other traffic to other addresses costs what it did, two address lookups). Only
// when neither is found are the addresses looked up for the reason, in the order the table in
// docs/fastpath.md gives.
static __always_inline __u32 decide(struct xdp_md *ctx, __u8 family, const __u8 *src, const __u8 *dst,
				    __be16 sport, __be16 dport, const __u8 *payload, __u32 plen, struct plan *p)
{
	void *end = (void *)(long)ctx->data_end;
	struct fp_chan_val *cv = NULL;
	int probed = 0;

	if (plen >= CHANNEL_HDR && (void *)(payload + CHANNEL_HDR) <= end && (payload[0] & 0xc0) == 0x40) {
		__u32 dlen = ((__u32)payload[2] << 8) | payload[3];
		// (A peer's datagram rarely looks like ChannelData of its own length.)
		if (plen - CHANNEL_HDR == dlen || plen - CHANNEL_HDR == ((dlen + 3) & ~3u)) {
			probed = 1;
			cv = chan_lookup(family, src, dst, sport, dport, payload);
		}
	}
	if (!cv) {
		int relay_ip = is_addr(dst, 0, family);
		if (relay_ip) {
			struct fp_peer_key pk = {};
			copy16(pk.peer, src);
			copy16(pk.relayed, dst);
			pk.peer_port = sport;
			pk.relayed_port = dport;
			pk.family = family;
			struct fp_peer_val *pv = bpf_map_lookup_elem(&fp_peers, &pk);
			if (pv)
				return peer_to_client(pv, plen, p);
		}
		if (!is_addr(dst, dport, family))
			return relay_ip ? PASS_NO_PEER : PASS_NOT_RELAY_ADDR;
	}
	return client_to_peer(ctx, family, src, dst, sport, dport, payload, plen, cv, probed, p);
}

// Next hop for what leaves; 0 or a pass reason. The kernel answers only when forwarding is on for
// the ingress interface (net.ipv4.conf.IF.forwarding / net.ipv6.conf.IF.forwarding): without it
// every packet goes to user space as `forwarding_off` (docs/fastpath.md).
static __always_inline __u32 route(struct xdp_md *ctx, __u8 family, const struct plan *p, __u16 tot_len,
				   struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = family == FAM_V4 ? AF_INET : AF_INET6;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = p->sport;
	fib->dport = p->dport;
	fib->tot_len = tot_len;
	fib->ifindex = ctx->ingress_ifindex;
	if (family == FAM_V4) {
		__builtin_memcpy(&fib->ipv4_src, p->src, 4);
		__builtin_memcpy(&fib->ipv4_dst, p->dst, 4);
	} else {
		__builtin_memcpy(fib->ipv6_src, p->src, 16);
		__builtin_memcpy(fib->ipv6_dst, p->dst, 16);
	}
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		return PASS_FORWARDING_OFF;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return PASS_NO_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return PASS_MTU;
	return PASS_NO_ROUTE;
}

// One's-complement sums, inlined (a bpf_csum_diff call walks its buffers word by word): 32-bit
// words and 16-bit halves summed into 64 bits in memory byte order, folded by csum_fold. Removing a
// word adds its complement (RFC 1624).
static __always_inline __u64 csum_replace32(__u64 sum, const __u8 *from, const __u8 *to, const int words)
{
#pragma unroll
	for (int i = 0; i < words; i++) {
		__u32 f, t;
		__builtin_memcpy(&f, from + 4 * i, 4);
		__builtin_memcpy(&t, to + 4 * i, 4);
		sum += (__u32)~f;
		sum += t;
	}
	return sum;
}

static __always_inline __u64 csum_replace16(__u64 sum, __be16 from, __be16 to)
{
	return sum + (__u16)~from + (__u16)to;
}

// The UDP checksum after the rewrite, updated from the old one: pseudo-header addresses and
// length, ports, UDP length, and the ChannelData header words removed and/or added. `family` is a
// constant at each call, so only the address words of that family are summed.
static __always_inline __u16 udp_csum(__u8 family, __u16 old, const __u8 *osrc, const __u8 *odst, __be16 osport,
				      __be16 odport, __be16 oulen, const struct plan *p, __be16 nulen)
{
	const int words = family == FAM_V4 ? 1 : 4;
	__u64 sum = (__u16)~old;
	sum = csum_replace32(sum, osrc, p->src, words);
	sum = csum_replace32(sum, odst, p->dst, words);
	sum = csum_replace16(sum, osport, p->sport);
	sum = csum_replace16(sum, odport, p->dport);
	sum = csum_replace16(sum, oulen, nulen); // the pseudo-header's length
	sum = csum_replace16(sum, oulen, nulen); // the UDP header's
	__be16 len_be = bpf_htons(p->data_len);
	if (p->strip) {
		sum += (__u16)~p->strip_chan;
		sum += (__u16)~len_be;
	}
	if (p->add) {
		sum += p->add_chan;
		sum += len_be;
	}
	if (p->trim) {
		sum += (__u32)~p->tail;
		sum += p->tail_kept;
	}
	__u16 c = csum_fold(sum);
	return c ? c : 0xffff;
}

// An IPv4 header's checksum (its check field zero), from scratch: five words.
static __always_inline __u16 ipv4_csum(const struct iphdr *ip)
{
	const __u8 *b = (const __u8 *)ip;
	__u64 sum = 0;
#pragma unroll
	for (int i = 0; i < 5; i++) {
		__u32 w;
		__builtin_memcpy(&w, b + 4 * i, 4);
		sum += w;
	}
	return csum_fold(sum);
}

static __always_inline int finish(struct xdp_md *ctx, const struct plan *p, const struct bpf_fib_lookup *fib)
{
	if (p->to_peer_a)
		alloc_charge(p->to_peer_a, p->to_peer_alloc, p->data_len, 1);
	if (p->to_client_a)
		alloc_charge(p->to_client_a, p->to_client_alloc, p->data_len, 0);
	if (fib->ifindex == ctx->ingress_ifindex) {
		count(ACT_TX);
		return XDP_TX;
	}
	count(ACT_REDIRECT);
	return bpf_redirect_map(&fp_tx_ports, fib->ifindex, XDP_PASS);
}

static __always_inline int egress_ok(struct xdp_md *ctx, const struct bpf_fib_lookup *fib)
{
	__u32 ifindex = fib->ifindex;
	return ifindex == ctx->ingress_ifindex || bpf_map_lookup_elem(&fp_tx_ports, &ifindex) != NULL;
}

// From the addresses and ports to a decided, routed plan: 0 or a pass reason. `ip_len` is the IP
// packet's length as it arrived (header included); `*delta` is what the rewrite adds to it (+4, 0,
// -4, less the padding trimmed).
static __always_inline __u32 plan_and_route(struct xdp_md *ctx, __u8 family, const __u8 *src, const __u8 *dst,
					    const struct udphdr *udp, const __u8 *payload, __u32 ip_len, struct plan *p,
					    struct bpf_fib_lookup *fib, int *delta)
{
	__u32 r = decide(ctx, family, src, dst, udp->source, udp->dest, payload, bpf_ntohs(udp->len) - sizeof(*udp), p);
	if (r)
		return r;
	*delta = (p->add ? CHANNEL_HDR : 0) - (p->strip ? CHANNEL_HDR : 0) - p->trim;
	if (ip_len + *delta > 0xffff)
		return PASS_LENGTH;
	r = route(ctx, family, p, ip_len + *delta, fib);
	if (r)
		return r;
	if (!egress_ok(ctx, fib))
		return PASS_NO_TX_PORT;
	return 0;
}

// Writes the new headers (moving the head by the ChannelData header added or removed, and the tail
// by the padding trimmed) and the ChannelData header when one is added, then counts and sends. `l3`
// is the new IP header, `l3_len` its (constant) size.
static __always_inline int emit(struct xdp_md *ctx, const struct plan *p, const struct bpf_fib_lookup *fib,
				__be16 proto, const void *l3, const __u32 l3_len, const struct udphdr *udp)
{
	int head = (p->add ? CHANNEL_HDR : 0) - (p->strip ? CHANNEL_HDR : 0);
	if (head && bpf_xdp_adjust_head(ctx, -head))
		return pass(PASS_ADJUST_FAILED);
	if (p->trim && bpf_xdp_adjust_tail(ctx, -(int)p->trim)) {
		// Moving the head back restores the packet as it arrived (its bytes were not written).
		if (head)
			bpf_xdp_adjust_head(ctx, head);
		return pass(PASS_ADJUST_FAILED);
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 *hdr = data + sizeof(struct ethhdr) + l3_len + sizeof(struct udphdr);
	if ((void *)hdr > end)
		return pass(PASS_ADJUST_FAILED);
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	eth->h_proto = proto;
	__builtin_memcpy(data + sizeof(struct ethhdr), l3, l3_len);
	__builtin_memcpy(data + sizeof(struct ethhdr) + l3_len, udp, sizeof(*udp));
	if (p->add) {
		if ((void *)(hdr + CHANNEL_HDR) > end) // (4 bytes were just added: cannot happen)
			return pass(PASS_ADJUST_FAILED);
		__builtin_memcpy(hdr, &p->add_chan, 2);
		hdr[2] = p->data_len >> 8;
		hdr[3] = p->data_len & 0xff;
	}
	return finish(ctx, p, fib);
}

// handle_v4 and handle_v6 are subprograms of their own (not inlined into turnkey_xdp): each one's
// stack stays under BPF's 512 bytes, where the two inlined together would not.
static __noinline int handle_v4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > end)
		return pass(PASS_LENGTH);
	if (ip->frag_off & bpf_htons(0x3fff)) // MF or an offset
		return pass(PASS_FRAGMENT);
	if (ip->ihl != 5)
		return pass(PASS_IP_OPTIONS);
	if (ip->protocol != IPPROTO_UDP)
		return pass(PASS_NOT_UDP);
	__u32 frame = end - data;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot + sizeof(struct ethhdr) > frame)
		return pass(PASS_LENGTH);
	if (tot + sizeof(struct ethhdr) < frame) {
		// Ethernet pads frames to 60 bytes: trim the padding; anything longer disagrees.
		if (frame > 60)
			return pass(PASS_LENGTH);
		if (bpf_xdp_adjust_tail(ctx, -(int)(frame - tot - sizeof(struct ethhdr))))
			return pass(PASS_ADJUST_FAILED);
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		ip = data + sizeof(struct ethhdr);
		if ((void *)(ip + 1) > end)
			return pass(PASS_LENGTH);
	}
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return pass(PASS_LENGTH);
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen != tot - sizeof(struct iphdr) || ulen < sizeof(struct udphdr))
		return pass(PASS_LENGTH);

	struct iphdr oip = *ip;
	struct udphdr oudp = *udp;
	__u8 src[16] = {}, dst[16] = {};
	__builtin_memcpy(src, &oip.saddr, 4);
	__builtin_memcpy(dst, &oip.daddr, 4);

	struct plan p = {};
	struct bpf_fib_lookup fib;
	int delta = 0;
	__u32 r = plan_and_route(ctx, FAM_V4, src, dst, &oudp, (const __u8 *)(udp + 1), tot, &p, &fib, &delta);
	if (r)
		return pass(r);

	__be16 nulen = bpf_htons(ulen + delta);
	__u16 ncheck =
		oudp.check ? udp_csum(FAM_V4, oudp.check, src, dst, oudp.source, oudp.dest, oudp.len, &p, nulen) : 0;
	struct iphdr nip = oip;
	nip.tot_len = bpf_htons(tot + delta);
	nip.ttl = RELAY_TTL;
	__builtin_memcpy(&nip.saddr, p.src, 4);
	__builtin_memcpy(&nip.daddr, p.dst, 4);
	nip.check = 0;
	nip.check = ipv4_csum(&nip);
	struct udphdr nudp = { .source = p.sport, .dest = p.dport, .len = nulen, .check = ncheck };
	return emit(ctx, &p, &fib, bpf_htons(ETH_P_IP), &nip, sizeof(nip), &nudp);
}

static __noinline int handle_v6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > end)
		return pass(PASS_LENGTH);
	__u8 nh = ip->nexthdr;
	if (nh == IPPROTO_FRAGMENT)
		return pass(PASS_FRAGMENT);
	if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS || nh == IPPROTO_AH ||
	    nh == IPPROTO_ESP || nh == 135 /* mobility */ || nh == 139 /* HIP */ || nh == 140 /* shim6 */)
		return pass(PASS_IP_OPTIONS);
	if (nh != IPPROTO_UDP)
		return pass(PASS_NOT_UDP);
	__u32 frame = end - data;
	__u32 plen6 = bpf_ntohs(ip->payload_len);
	if (plen6 + sizeof(struct ethhdr) + sizeof(struct ipv6hdr) != frame)
		return pass(PASS_LENGTH); // (IPv6 frames are never below Ethernet's 60-byte minimum)
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return pass(PASS_LENGTH);
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen != plen6 || ulen < sizeof(struct udphdr))
		return pass(PASS_LENGTH);
	if (udp->check == 0) // a zero UDP checksum is invalid over IPv6 (RFC 8200 §8.1)
		return pass(PASS_LENGTH);

	struct ipv6hdr oip = *ip;
	struct udphdr oudp = *udp;
	__u8 src[16], dst[16];
	__builtin_memcpy(src, &oip.saddr, 16);
	__builtin_memcpy(dst, &oip.daddr, 16);

	struct plan p = {};
	struct bpf_fib_lookup fib;
	int delta = 0;
	__u32 r = plan_and_route(ctx, FAM_V6, src, dst, &oudp, (const __u8 *)(udp + 1), sizeof(struct ipv6hdr) + plen6,
				 &p, &fib, &delta);
	if (r)
		return pass(r);

	__be16 nulen = bpf_htons(ulen + delta);
	__u16 ncheck = udp_csum(FAM_V6, oudp.check, src, dst, oudp.source, oudp.dest, oudp.len, &p, nulen);
	struct ipv6hdr nip = oip;
	nip.payload_len = nulen;
	nip.hop_limit = RELAY_TTL;
	__builtin_memcpy(&nip.saddr, p.src, 16);
	__builtin_memcpy(&nip.daddr, p.dst, 16);
	struct udphdr nudp = { .source = p.sport, .dest = p.dport, .len = nulen, .check = ncheck };
	return emit(ctx, &p, &fib, bpf_htons(ETH_P_IPV6), &nip, sizeof(nip), &nudp);
}

SEC("xdp")
int turnkey_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return pass(PASS_NOT_IP);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx);
	return pass(PASS_NOT_IP);
}

// The stub for the far end of a veth (its XDP_TX / redirect only delivers when the peer veth runs an
// XDP program); also what the tests attach to their peer namespaces.
SEC("xdp")
int turnkey_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

// The kernel lets only GPL-compatible programs call bpf_fib_lookup; this file is dual-licensed.
char LICENSE[] SEC("license") = "GPL";
