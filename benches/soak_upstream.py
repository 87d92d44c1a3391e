#!/usr/bin/env python3
"""The soak's upstream: answers GET and POST (reading the whole body) with a small JSON
document, and echoes WebSocket messages after an RFC 6455 upgrade. Plain HTTP/1.1 on
127.0.0.1, one thread per connection. Usage: soak_upstream.py PORT"""

import base64
import hashlib
import json
import socket
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return (lines[0], headers), rest


def read_exact(conn, buf, n):
    while len(buf) < n:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf[:n], buf[n:]


def websocket(conn, buf, headers):
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        hdr, buf = read_exact(conn, buf, 2)
        opcode, length = hdr[0] & 0x0F, hdr[1] & 0x7F
        if length == 126:
            ext, buf = read_exact(conn, buf, 2)
            length = int.from_bytes(ext, "big")
        elif length == 127:
            ext, buf = read_exact(conn, buf, 8)
            length = int.from_bytes(ext, "big")
        mask, buf = read_exact(conn, buf, 4) if hdr[1] & 0x80 else (b"\0\0\0\0", buf)
        payload, buf = read_exact(conn, buf, length)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if opcode == 8:
            conn.sendall(b"\x88\x00")
            return
        size = len(payload)
        frame = bytes([0x80 | opcode]) + (bytes([size]) if size < 126 else b"\x7e" + size.to_bytes(2, "big"))
        conn.sendall(frame + payload)


def serve(conn):
    buf = b""
    try:
        while True:
            parsed, buf = read_head(conn, buf)
            if parsed is None:
                return
            (line, headers) = parsed
            if headers.get("upgrade", "").lower() == "websocket":
                websocket(conn, buf, headers)
                return
            length = int(headers.get("content-length", "0"))
            if headers.get("transfer-encoding", "").lower() == "chunked":
                raise ConnectionError("chunked uploads are not used by the soak")
            _, buf = read_exact(conn, buf, length)
            body = json.dumps({"request": line.split(" ")[:2], "body_bytes": length}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
    except (ConnectionError, OSError, KeyError, ValueError):
        pass
    finally:
        conn.close()


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(1024)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
