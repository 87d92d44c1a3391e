#!/usr/bin/env python3
"""WebSocket load for the soak: for SECONDS, open a WebSocket through the gateway (TLS with a
client certificate), exchange 20 messages, close; again. Prints tunnels and messages done.
Usage: soak_ws.py HOST PORT CA CERT KEY SECONDS"""

import base64
import os
import socket
import ssl
import sys
import time


def frame(payload, opcode=1):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def one_tunnel(ctx, host, port):
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += recv_exact(s, 1)
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(head.split(b"\r\n")[0].decode())
            for i in range(20):
                msg = f"message {i}".encode()
                s.sendall(frame(msg))
                hdr = recv_exact(s, 2)
                if recv_exact(s, hdr[1] & 0x7F) != msg:
                    raise ConnectionError("echo mismatch")
            s.sendall(frame(b"", opcode=8))
            recv_exact(s, 2)
    return 20


def main():
    host, port, ca, cert, key, seconds = sys.argv[1:7]
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    end = time.time() + float(seconds)
    tunnels = messages = failures = 0
    while time.time() < end:
        try:
            messages += one_tunnel(ctx, host, int(port))
            tunnels += 1
        except (OSError, ConnectionError):
            failures += 1
            time.sleep(0.1)
    print(f"websocket: {tunnels} tunnels, {messages} messages, {failures} failures")


if __name__ == "__main__":
    main()
