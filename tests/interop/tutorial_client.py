#!/usr/bin/env python3
"""A client with the Python socket tutorial's app-client wire habits, exactly:
json.dumps(..., ensure_ascii=False) headers with the default separators,
struct.pack(">H", ...), one request per connection, recv(4096) until the
whole response is in, then close.

Usage: tutorial_client.py HOST PORT ACTION VALUE
Prints 'Got result: ...' (text/json) or 'Got response: b...' (binary).
"""
import io
import json
import socket
import struct
import sys


def json_encode(obj, encoding):
    return json.dumps(obj, ensure_ascii=False).encode(encoding)


def json_decode(json_bytes, encoding):
    with io.TextIOWrapper(io.BytesIO(json_bytes), encoding=encoding, newline="") as tiow:
        return json.load(tiow)


def create_request(action, value):
    if action == "search":
        return dict(type="text/json", encoding="utf-8", content=dict(action=action, value=value))
    return dict(type="binary/custom-client-binary-type", encoding="binary",
                content=bytes(action + value, encoding="utf-8"))


def create_message(content_bytes, content_type, content_encoding):
    jsonheader = {
        "byteorder": sys.byteorder,
        "content-type": content_type,
        "content-encoding": content_encoding,
        "content-length": len(content_bytes),
    }
    jsonheader_bytes = json_encode(jsonheader, "utf-8")
    message_hdr = struct.pack(">H", len(jsonheader_bytes))
    return message_hdr + jsonheader_bytes + content_bytes


def main():
    host, port, action, value = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    req = create_request(action, value)
    if req["type"] == "text/json":
        content = json_encode(req["content"], req["encoding"])
    else:
        content = req["content"]
    out = create_message(content, req["type"], req["encoding"])

    sock = socket.create_connection((host, port), timeout=10)
    while out:  # the tutorial sends with sock.send, which may be short
        sent = sock.send(out)
        out = out[sent:]

    buf = b""
    jsonheader = None
    hdrlen = None
    while True:
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("Peer closed.")
        buf += data
        if hdrlen is None and len(buf) >= 2:
            hdrlen = struct.unpack(">H", buf[:2])[0]
            buf = buf[2:]
        if hdrlen is not None and jsonheader is None and len(buf) >= hdrlen:
            jsonheader = json_decode(buf[:hdrlen], "utf-8")
            buf = buf[hdrlen:]
            for reqhdr in ("byteorder", "content-length", "content-type", "content-encoding"):
                if reqhdr not in jsonheader:
                    raise ValueError(f"Missing required header '{reqhdr}'.")
        if jsonheader is not None and len(buf) >= jsonheader["content-length"]:
            content_len = jsonheader["content-length"]
            data = buf[:content_len]
            break
    sock.close()

    if jsonheader["content-type"] == "text/json":
        response = json_decode(data, jsonheader["content-encoding"])
        print(f"Received response {response!r} from {(host, port)}")
        print(f"Got result: {response.get('result')}")
    else:
        print(f"Received {jsonheader['content-type']} response from {(host, port)}")
        print(f"Got response: {data!r}")


if __name__ == "__main__":
    main()
