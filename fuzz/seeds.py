#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/) from the project's test vectors: the RFC 5769
STUN samples the engine tests use, the TURN requests a client sends (Allocate, Refresh,
CreatePermission, ChannelBind, Send), ChannelData, stream framing, TURN REST usernames, the
example configs in deploy/ and the credential request bodies of docs/issuer.md.

Run from anywhere: python3 fuzz/seeds.py. The files are committed; rerun after changing a vector.
"""
import os
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
COOKIE = 0x2112A442

RFC5769 = {
    "request": "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf",
    "response_v4": "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96",
    "response_v6": "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c",
    "long_term": "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
}

ALLOCATE, REFRESH, SEND, CREATE_PERMISSION, CHANNEL_BIND, BINDING = 0x003, 0x004, 0x006, 0x008, 0x009, 0x001
REQUEST, INDICATION = 0x0000, 0x0010


def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def xor_addr(ip, port):
    a = bytes(int(x) for x in ip.split("."))
    x = bytes(b ^ c for b, c in zip(a, struct.pack("!I", COOKIE)))
    return struct.pack("!BBH", 0, 1, port ^ (COOKIE >> 16)) + x


def stun(method, cls, attrs, txid=b"fuzzseedtxid"):
    body = b"".join(attr(t, v) for t, v in attrs)
    return struct.pack("!HHI", method | cls, len(body), COOKIE) + txid + body


PEER = ("8.8.8.8", 1024)
MESSAGES = {
    "binding": stun(BINDING, REQUEST, []),
    "allocate": stun(ALLOCATE, REQUEST, [(0x0019, b"\x11\0\0\0")]),
    "allocate_tcp": stun(ALLOCATE, REQUEST, [(0x0019, b"\x06\0\0\0")]),
    "allocate_v6_even": stun(ALLOCATE, REQUEST, [(0x0019, b"\x11\0\0\0"), (0x0017, b"\x02\0\0\0"), (0x0018, b"\x80")]),
    "refresh": stun(REFRESH, REQUEST, [(0x000D, struct.pack("!I", 600))]),
    "refresh_zero": stun(REFRESH, REQUEST, [(0x000D, struct.pack("!I", 0))]),
    "permission": stun(CREATE_PERMISSION, REQUEST, [(0x0012, xor_addr(*PEER))]),
    "channel_bind": stun(CHANNEL_BIND, REQUEST, [(0x000C, b"\x40\x00\0\0"), (0x0012, xor_addr(*PEER))]),
    "send": stun(SEND, INDICATION, [(0x0012, xor_addr(*PEER)), (0x0013, b"hello peer")]),
}


def channel_data(ch, payload, pad=False):
    m = struct.pack("!HH", ch, len(payload)) + payload
    return m + (b"\0" * (-len(m) % 4) if pad else b"")


def record(op, data):
    return bytes([op]) + struct.pack("!H", len(data)) + data


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    vectors = {k: bytes.fromhex(v) for k, v in RFC5769.items()}
    for k, v in vectors.items():
        write("stun_engine", f"rfc5769_{k}", record(0, v))
    for k, v in MESSAGES.items():
        write("stun_engine", f"raw_{k}", record(0, v))
    # The 401 dance, then signed requests from the same 5-tuple (op 1: signed, selector 0).
    flow = [MESSAGES["allocate"], MESSAGES["permission"], MESSAGES["channel_bind"], MESSAGES["send"], MESSAGES["refresh"]]
    write("stun_engine", "flow_signed", record(0, MESSAGES["allocate"]) + b"".join(record(1, m) for m in flow))
    write("stun_engine", "flow_expiry", record(0, MESSAGES["allocate"]) + record(1, MESSAGES["allocate"]) + record(3, b"\xff") * 4)

    cd = channel_data(0x4000, b"payload to the peer")
    bound = record(0, MESSAGES["allocate"]) + record(0, MESSAGES["allocate"]) + record(0, MESSAGES["permission"])
    bound += record(0, MESSAGES["channel_bind"])
    write("channel_data", "bind_then_send", bound + record(2, cd) + record(6, b"\x01\x00peer says hi"))
    write("channel_data", "padded", bound + record(2, channel_data(0x4000, b"abc", pad=True)))
    write("channel_data", "short_length", bound + record(2, struct.pack("!HH", 0x4000, 100) + b"x"))
    write("channel_data", "unbound_channel", record(2, channel_data(0x4FFF, b"nobody")))

    stream = b"".join(vectors.values()) + channel_data(0x4000, b"abc", pad=True) + MESSAGES["allocate"]
    write("stream_framing", "vectors_and_channel_data", b"\x00" + stream)
    write("stream_framing", "chunked_by_3", b"\x02" + stream)
    write("stream_framing", "channel_data_only", b"\x05" + channel_data(0x4001, bytes(range(200)), pad=True) * 3)
    write("stream_framing", "http_request", b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    write("stream_framing", "tls_record", b"\x00\x16\x03\x01\x00\x05hello")

    for i, u in enumerate(["1800000000:alice", "1800000000:0123456789abcdef0123456789abcdef:bob",
                           "0:x", "18446744073709551615:u", "1800000000:", ":alice", "12a:b", "1800000000:a:b:c"]):
        write("rest_username", f"u{i}", u.encode())

    for p in sorted((ROOT / "deploy").glob("*.toml")):
        write("config", p.name, p.read_bytes())
    write("config", "empty", b"")
    write("config", "bad_values", b'[relay]\nrelay_ports = "9-1"\nmax_frame = 1\n[http_limits]\nheader_timeout = 0\n')
    write("config", "unknown_keys", b'nope = 1\n[relay]\nudpp = ["x"]\n')

    bodies = [b'{"ttl": 600}', b'{"ttl": 600, "customIdentifier": "bob"}', b"{}", b"", b'{"ttl": 1.5}',
              b'{"ttl": "600"}', b'{"customIdentifier": 7}', b"[1,2]", b"{nope"]
    for sel in range(3):
        for i, b in enumerate(bodies):
            write("issuer_body", f"e{sel}_b{i}", bytes([sel]) + b)
    write("issuer_body", "revoke", b"\x03" + b"1800000600:0123456789abcdef0123456789abcdef")
    write("issuer_body", "revoke_garbage", b"\x03" + b"garbage")


if __name__ == "__main__":
    main()
