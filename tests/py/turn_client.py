#!/usr/bin/env python3
"""Drives a TURN server with aioice's TURN client (an implementation nobody in this project wrote).

Prints one JSON object on stdout. Modes:
  relay    allocate, send --count messages through the relay to a UDP echo peer on loopback
           (--echo-host, default 127.0.0.1, and --echo-port; aioice binds a channel), and count
           the echoes that come back through the relay
  authfail expect the allocation to be refused; report the STUN error code (and the
           ALTERNATE-SERVER of a 300 Try Alternate)
  revoke   like relay, then POST the revoke URL (after --revoke-after seconds; a 503 is
           retried for --revoke-retry seconds), wait, and check that the live allocation
           stopped relaying and that a new allocation is refused
  abandon  allocate, print the relayed address, wait --hold seconds, then exit without
           deallocating or closing anything (the OS closes the connection)
  session  allocate, relay --count messages, print one JSON line (relayed and client
           addresses), then obey commands read from stdin, one JSON line per command:
           `relay N` (relay N more; the echoes received), `refresh` (a Refresh; "ok" or the
           STUN error code), `quit`
"""
import argparse
import asyncio
import json
import errno
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request

import aioice.stun
import aioice.turn

# aioice does not decode ALTERNATE-SERVER (RFC 8489 §14.15, MAPPED-ADDRESS encoding): teach it.
_ALTERNATE_SERVER = (0x8023, "ALTERNATE-SERVER", aioice.stun.pack_address, aioice.stun.unpack_address)
aioice.stun.ATTRIBUTES_BY_TYPE.setdefault(0x8023, _ALTERNATE_SERVER)
aioice.stun.ATTRIBUTES_BY_NAME.setdefault("ALTERNATE-SERVER", _ALTERNATE_SERVER)


def echo_socket(host, port):
    """A UDP socket bound to (host, port) for the echo peer. With port 0 the kernel picks the
    port, and a port some local TCP listener also holds is picked again: the relay under test
    refuses its own service ports as peers whatever the protocol (security.md), so an echo peer
    that drew the number of the relay's TCP or metrics listener would be refused by chance."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held = []
    try:
        for _ in range(64):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((host, port))
            if port != 0:
                return udp
            probe = socket.socket(family, socket.SOCK_STREAM)
            try:
                probe.bind((host, udp.getsockname()[1]))
                return udp
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                held.append(udp)  # keep it bound so the next draw differs
            finally:
                probe.close()
        raise RuntimeError("no UDP port without a TCP listener on the same number")
    finally:
        for s in held:
            s.close()


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.received = 0
        self.peers = set()

    def datagram_received(self, data, addr):
        self.received += 1
        self.peers.add(addr)
        self.transport.sendto(data, addr)


class Collector(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        print(f"error_received: {exc!r}", file=sys.stderr)


async def allocate(args):
    ssl_ctx = None
    if args.transport == "tls":
        ssl_ctx = ssl.create_default_context(cafile=args.ca) if args.ca else ssl.create_default_context()
        if not args.ca:
            ssl_ctx.check_hostname = False
            ssl_ctx.verify_mode = ssl.CERT_NONE
        else:
            ssl_ctx.check_hostname = False
    host, port = args.server.rsplit(":", 1)
    return await aioice.turn.create_turn_endpoint(
        Collector,
        server_addr=(host, int(port)),
        username=args.user,
        password=args.password,
        ssl=ssl_ctx,
        transport="tcp" if args.transport in ("tcp", "tls") else "udp",
    )


async def exchange(transport, protocol, echo_addr, count, size, timeout=3.0, interval=0.0):
    """Ping-pong: sends each message and waits up to `timeout` seconds for its own echo (late
    echoes of earlier messages are skipped), so a slow, loaded machine delays but never fails;
    `interval` seconds between messages make a call that lasts. Returns (echoes received, their
    payload bytes, indexes of the messages never echoed)."""
    received = 0
    payload_bytes = 0
    missing = []
    for i in range(count):
        if i and interval:
            await asyncio.sleep(interval)
        msg = (f"{i:08d}".encode() * (size // 8 + 1))[:size]
        transport.sendto(msg, echo_addr)
        deadline = time.monotonic() + timeout
        got = False
        while not got:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                data, addr = await asyncio.wait_for(protocol.queue.get(), left)
            except asyncio.TimeoutError:
                break
            if data == msg and addr[1] == echo_addr[1]:
                received += 1
                payload_bytes += len(data)
                got = True
        if not got:
            missing.append(i)
    return received, payload_bytes, missing


async def session_commands(transport, protocol, inner, echo_addr, size):
    """The `session` mode's command loop (see the module doc)."""
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            os._exit(0)
        if line.startswith("relay "):
            n = int(line.split()[1])
            received, payload_bytes, _ = await exchange(transport, protocol, echo_addr, n, size, timeout=1.0)
            print(json.dumps({"received": received, "payload_bytes": payload_bytes}), flush=True)
        elif line == "refresh":
            request = aioice.stun.Message(
                message_method=aioice.stun.Method.REFRESH, message_class=aioice.stun.Class.REQUEST
            )
            request.attributes["LIFETIME"] = 600
            try:
                await inner.request_with_retry(request)
                print(json.dumps({"refresh": "ok"}), flush=True)
            except aioice.stun.TransactionFailed as e:
                print(json.dumps({"refresh": e.response.attributes.get("ERROR-CODE", (0, ""))[0]}), flush=True)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["relay", "authfail", "revoke", "abandon", "session"])
    p.add_argument("--server", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--transport", default="udp", choices=["udp", "tcp", "tls"])
    p.add_argument("--ca")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--revoke-url")
    p.add_argument("--token")
    p.add_argument("--hold", type=float, default=2.0)
    p.add_argument("--revoke-wait", type=float, default=1.5, help="seconds between the revoke and the checks")
    p.add_argument("--revoke-after", type=float, default=0.0, help="seconds between the relaying and the revoke")
    p.add_argument("--revoke-retry", type=float, default=0.0, help="seconds a 503 answer to the revoke is retried")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between messages (relay mode)")
    p.add_argument("--echo-host", default="127.0.0.1", help="address the echo peer binds (relay mode)")
    p.add_argument("--echo-port", type=int, default=0, help="port the echo peer binds (0: any)")
    args = p.parse_args()

    loop = asyncio.get_running_loop()
    # aioice sends from background tasks: keep their failures (e.g. a ChannelBind that failed)
    # for the JSON result instead of losing them in stderr.
    task_errors = []
    loop.set_exception_handler(lambda _loop, ctx: task_errors.append(repr(ctx.get("exception") or ctx.get("message"))))
    if args.mode == "abandon":
        transport, _ = await allocate(args)
        relayed = transport.get_extra_info("sockname")
        print(json.dumps({"relayed": f"{relayed[0]}:{relayed[1]}"}), flush=True)
        await asyncio.sleep(args.hold)
        os._exit(0)
    if args.mode == "authfail":
        try:
            transport, _ = await allocate(args)
        except aioice.stun.TransactionFailed as e:
            code = e.response.attributes.get("ERROR-CODE", (0, ""))[0]
            out = {"allocated": False, "error": code}
            alternate = e.response.attributes.get("ALTERNATE-SERVER")
            if alternate:
                out["alternate"] = f"{alternate[0]}:{alternate[1]}"
            print(json.dumps(out))
            return
        transport.close()
        print(json.dumps({"allocated": True}))
        return

    echo_transport, echo = await loop.create_datagram_endpoint(Echo, sock=echo_socket(args.echo_host, args.echo_port))
    echo_addr = echo_transport.get_extra_info("sockname")
    transport, protocol = await allocate(args)
    relayed = transport.get_extra_info("sockname")
    received, payload_bytes, missing = await exchange(
        transport, protocol, echo_addr, args.count, args.size, interval=args.interval
    )
    result = {
        "relayed": f"{relayed[0]}:{relayed[1]}",
        "sent": args.count,
        "received": received,
        "echo_seen": echo.received,
        "echo_peers": sorted(f"{a}:{b}" for a, b in echo.peers),
        "payload_bytes": payload_bytes,
        "missing": missing,
        "task_errors": task_errors,
    }
    if args.mode == "session":
        inner = transport._TurnTransport__inner_protocol
        local = inner.transport.get_extra_info("sockname")
        result["client"] = f"{local[0]}:{local[1]}"
        print(json.dumps(result), flush=True)
        await session_commands(transport, protocol, inner, echo_addr, args.size)
        return
    if args.mode == "revoke":
        await asyncio.sleep(args.revoke_after)
        req = urllib.request.Request(args.revoke_url, method="POST", headers={"Authorization": f"Bearer {args.token}"})
        retry_until = time.monotonic() + args.revoke_retry
        result["revoke_503s"] = 0
        while True:
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    result["revoke_status"] = r.status
                break
            except urllib.error.HTTPError as e:
                if e.code != 503 or time.monotonic() >= retry_until:
                    raise
                result["revoke_503s"] += 1
                await asyncio.sleep(0.05)
        await asyncio.sleep(args.revoke_wait)
        before = echo.received
        after, _, _ = await exchange(transport, protocol, echo_addr, 5, args.size, timeout=0.3)
        result["after_revoke_received"] = after
        result["after_revoke_echo_seen"] = echo.received - before
        try:
            t2, _ = await allocate(args)
            t2.close()
            result["reallocate"] = "allocated"
        except aioice.stun.TransactionFailed as e:
            result["reallocate"] = e.response.attributes.get("ERROR-CODE", (0, ""))[0]
    else:
        transport.close()
        await asyncio.sleep(0.2)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
