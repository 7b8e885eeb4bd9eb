#!/usr/bin/env python3
"""Prints a port on 127.0.0.1 that is free over both TCP and UDP (a server started on it
listens on both), for the bench scripts: bench/load-cpu.sh, bench/load-capacity.sh and
bench/stall.sh.

    PORT=$(python3 bench/freeport.py)          # one port
    read -r A B < <(python3 bench/freeport.py 2)  # two different ports

The port is free when this returns; another process may still take it before the caller binds
it (the scripts start their server right away).
"""
import socket
import sys


def free_port(host="127.0.0.1"):
    while True:
        with socket.socket() as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            with socket.socket(type=socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    ports = []
    while len(ports) < count:
        p = free_port()
        if p not in ports:
            ports.append(p)
    print(" ".join(map(str, ports)))


if __name__ == "__main__":
    main()
