// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// The injector of bench/kcapacity.py: sends ready-made Ethernet frames (one per flow, taken in
// turn) out of IFNAME at RATE frames/s for SECS seconds, BATCH frames per sendmmsg() on a packet
// socket that bypasses the qdisc (PACKET_QDISC_BYPASS): the cheapest way a process hands frames
// to a device, with no UDP socket, route or neighbour lookup per frame. Calls are paced against
// the clock, one batch at a time: a generator that fell behind (its core busy elsewhere) skips
// what it missed instead of sending it in one burst, as traffic from many clients would not
// arrive in a catch-up burst either (a burst of several hundred frames overflows a veth's
// 256-frame ring whatever the server). Prints one JSON line: frames the kernel took, seconds,
// calls, frames refused, frames skipped.
//
//   kgen_inject IFNAME FRAMES RATE SECS BATCH
//   FRAMES: the flows' frames in hex, comma-separated
//
// Built by kcapacity.py (cc -O2 bench/kgen_inject.c). Root; run in the interface's namespace.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_FLOWS 1024
#define MAX_BATCH 256
#define MAX_FRAME 2048

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: kgen_inject IFNAME FRAMES RATE SECS BATCH\n");
		return 2;
	}
	double rate = strtod(argv[3], NULL), secs = strtod(argv[4], NULL);
	unsigned batch = strtoul(argv[5], NULL, 10);
	if (rate <= 0 || secs <= 0 || batch == 0 || batch > MAX_BATCH) {
		fprintf(stderr, "kgen_inject: bad rate, seconds or batch\n");
		return 2;
	}
	static unsigned char frames[MAX_FLOWS][MAX_FRAME];
	size_t lens[MAX_FLOWS];
	unsigned flows = 0;
	for (char *tok = strtok(argv[2], ","); tok; tok = strtok(NULL, ",")) {
		size_t len = strlen(tok) / 2;
		if (flows == MAX_FLOWS || len < ETH_ZLEN - 4 || len > MAX_FRAME) {
			fprintf(stderr, "kgen_inject: bad frame %u\n", flows);
			return 2;
		}
		for (size_t i = 0; i < len; i++)
			sscanf(tok + 2 * i, "%2hhx", &frames[flows][i]);
		lens[flows++] = len;
	}
	if (!flows) {
		fprintf(stderr, "kgen_inject: no frames\n");
		return 2;
	}

	// Sleeps end when asked, not up to 50 us later (the default timer slack): at several hundred
	// thousand frames/s a batch is due every 100 us or so.
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("kgen_inject: socket");
		return 1;
	}
	int one = 1, sndbuf = 4 << 20;
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf));
	struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1]),
				 .sll_halen = ETH_ALEN};
	if (!to.sll_ifindex) {
		perror("kgen_inject: interface");
		return 1;
	}
	memcpy(to.sll_addr, frames[0], ETH_ALEN);

	// Each batch's slots: flows in turn, continuing where the previous batch stopped.
	static struct iovec iov[MAX_BATCH];
	static struct mmsghdr msgs[MAX_BATCH];
	unsigned next = 0;
	uint64_t sent = 0, calls = 0, refused = 0, skipped = 0;
	double start = now(), end = start + secs;
	for (;;) {
		double t = now();
		if (t >= end)
			break;
		double due = (t - start) * rate - (double)(sent + refused + skipped);
		if (due >= 2.0 * batch) {
			// Behind by more than a batch: skip the debt, send one batch now.
			skipped += (uint64_t)due - batch;
			due = batch;
		}
		if (due < batch) {
			double wait = (batch - due) / rate;
			if (t + wait > end)
				break;
			struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
			nanosleep(&ts, NULL);
			continue;
		}
		for (unsigned i = 0; i < batch; i++) {
			iov[i].iov_base = frames[next];
			iov[i].iov_len = lens[next];
			msgs[i].msg_hdr = (struct msghdr){.msg_name = &to, .msg_namelen = sizeof(to),
							  .msg_iov = &iov[i], .msg_iovlen = 1};
			next = next + 1 == flows ? 0 : next + 1;
		}
		unsigned done = 0;
		while (done < batch) {
			int n = sendmmsg(fd, msgs + done, batch - done, 0);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno != ENOBUFS && errno != EAGAIN) {
					perror("kgen_inject: sendmmsg");
					return 1;
				}
				// The device refused the next frame (its ring full): count it, go on.
				refused++;
				done++;
				continue;
			}
			done += n;
			sent += n;
		}
		calls++;
	}
	printf("{\"sent\": %llu, \"secs\": %.6f, \"calls\": %llu, \"refused\": %llu, \"skipped\": %llu, "
	       "\"flows\": %u}\n",
	       (unsigned long long)sent, now() - start, (unsigned long long)calls, (unsigned long long)refused,
	       (unsigned long long)skipped, flows);
	return 0;
}
