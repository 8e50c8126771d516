#!/usr/bin/env python3
"""A server with the Python socket tutorial's app-server wire habits, exactly:
it reads one request, answers it (json.dumps(..., ensure_ascii=False)
headers, struct.pack(">H", ...)), and closes the connection.

Usage: tutorial_server.py HOST PORT   (PORT 0: prints the chosen port)
Runs until killed; serves connections one after another.
"""
import io
import json
import socket
import struct
import sys

request_search = {
    "morpheus": "Follow the white rabbit. \U0001f430",
    "ring": "In the caves beneath the Misty Mountains. \U0001f48d",
    "\U0001f436": "\U0001f43e Playing ball! \U0001f3d0",
}


def json_encode(obj, encoding):
    return json.dumps(obj, ensure_ascii=False).encode(encoding)


def json_decode(json_bytes, encoding):
    with io.TextIOWrapper(io.BytesIO(json_bytes), encoding=encoding, newline="") as tiow:
        return json.load(tiow)


def create_message(content_bytes, content_type, content_encoding):
    jsonheader = {
        "byteorder": sys.byteorder,
        "content-type": content_type,
        "content-encoding": content_encoding,
        "content-length": len(content_bytes),
    }
    jsonheader_bytes = json_encode(jsonheader, "utf-8")
    return struct.pack(">H", len(jsonheader_bytes)) + jsonheader_bytes + content_bytes


def read_request(conn):
    buf = b""
    hdrlen = jsonheader = None
    while True:
        data = conn.recv(4096)
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
            return jsonheader, buf[: jsonheader["content-length"]]


def create_response(jsonheader, data):
    if jsonheader["content-type"] == "text/json":
        request = json_decode(data, jsonheader["content-encoding"])
        action = request.get("action")
        if action == "search":
            query = request.get("value")
            answer = request_search.get(query) or f'No match for "{query}".'
            content = {"result": answer}
        else:
            content = {"result": f'Error: invalid action "{action}".'}
        return create_message(json_encode(content, "utf-8"), "text/json", "utf-8")
    content = b"First 10 bytes of request: " + data[:10]
    return create_message(content, "binary/custom-server-binary-type", "binary")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen()
    print(f"Listening on {lsock.getsockname()}", flush=True)
    while True:
        conn, addr = lsock.accept()
        try:
            jsonheader, data = read_request(conn)
            out = create_response(jsonheader, data)
            while out:
                sent = conn.send(out)
                out = out[sent:]
        except Exception as e:  # one bad peer must not stop the test server
            print(f"Error with {addr}: {e!r}", flush=True)
        finally:
            conn.close()


if __name__ == "__main__":
    main()
