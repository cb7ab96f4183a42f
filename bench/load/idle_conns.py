#!/usr/bin/env python3
"""Memory of idle keep-alive connections: opens N connections to URL, sends one request on each
(the isolated benchmark's chat request), reads the answer, keeps them all open and prints the
server's RSS (kB, /proc/<pid>/status VmRSS summed over PIDS) before and with them open.
Usage: idle_conns.py URL KEY MODEL N PID[,PID...]"""
import socket
import sys
import time
from urllib.parse import urlparse


def rss_kb(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def read_answer(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        body += s.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())


def main():
    url, key, model, n, pids = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    pids = [p for p in pids.split(",") if p]
    u = urlparse(url)
    body = ('{"model":"%s","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5}'
            % model).encode()
    req = (f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nAuthorization: Bearer {key}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    before = rss_kb(pids)
    socks = []
    for _ in range(n):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(req)
        read_answer(s)
        socks.append(s)
    time.sleep(0.5)
    with_conns = rss_kb(pids)
    print(before, with_conns)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
