#!/usr/bin/env python3
"""Which flows a TURN client set up, read off the wire (bench/kcapacity.py): run in the load
generator's namespace, prints a JSON list of [client UDP port, channel number] for the first N
distinct client ports that send ChannelData to SERVER_IP:PORT out of DEV, or exits 1 after SECS.

    kgen_sniff.py DEV SERVER_IP PORT N SECS
"""

import json
import socket
import struct
import sys
import time

ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4


def main(dev: str, server_ip: str, port: str, n: str, secs: str) -> None:
    want, server, dport = int(n), socket.inet_aton(server_ip), int(port)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    s.settimeout(0.5)
    flows: dict[int, int] = {}
    deadline = time.monotonic() + float(secs)
    while len(flows) < want and time.monotonic() < deadline:
        try:
            frame, addr = s.recvfrom(65536)
        except TimeoutError:
            continue
        if addr[2] != PACKET_OUTGOING or len(frame) < 46 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:34]
        if ip[0] != 0x45 or ip[9] != 17 or ip[16:20] != server:
            continue
        sport, dst = struct.unpack("!HH", frame[34:38])
        channel = struct.unpack("!H", frame[42:44])[0]
        if dst == dport and 0x4000 <= channel <= 0x7FFF:
            flows[sport] = channel
    if len(flows) < want:
        sys.exit(f"saw {len(flows)} of {want} flows in {secs} s")
    print(json.dumps(sorted(flows.items())))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
