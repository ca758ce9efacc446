#!/usr/bin/env python3
"""Hold N idle HTTP/1.1 keep-alive connections open to a proxy on 127.0.0.1.

Used by bench/run.sh for the "RSS with 1,000 idle connections" figure:

1. open --conns connections to 127.0.0.1:--port (at most --connect-parallel
   connects in flight);
2. send one `GET /` with keep-alive on each and read the whole response (at
   most --request-parallel requests in flight, so the proxy needs only a few
   upstream connections: the figure is about downstream connections);
3. write "opened=N ok=N failed=N" to --ready-file (atomically) and keep every
   connection open, sending nothing;
4. when --release-file appears (or after --hold seconds), count the
   connections the proxy has not closed, append "still_open=N" to the ready
   file, and exit.

Standard library only; loopback only; every wait is bounded.
"""

import argparse
import asyncio
import os
import resource
import sys

HOST = "127.0.0.1"
TIMEOUT_S = 10.0


async def read_response(reader):
    """Read one HTTP/1.1 response; return (status, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked, keep_alive = 0, False, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and "close" in value:
            keep_alive = False
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep_alive


async def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--release-file", required=True)
    ap.add_argument("--hold", type=float, default=120.0)
    ap.add_argument("--connect-parallel", type=int, default=100)
    ap.add_argument("--request-parallel", type=int, default=10)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.conns + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < need:
            sys.exit(f"idle_conns: open-files limit {new} < {need}: raise ulimit -n")

    conns = []
    connect_sem = asyncio.Semaphore(args.connect_parallel)

    async def connect():
        async with connect_sem:
            try:
                conns.append(await asyncio.wait_for(
                    asyncio.open_connection(HOST, args.port), TIMEOUT_S))
            except (OSError, asyncio.TimeoutError) as e:
                print(f"connect failed: {e!r}", file=sys.stderr)

    await asyncio.gather(*(connect() for _ in range(args.conns)))

    request = (f"GET / HTTP/1.1\r\nHost: {HOST}:{args.port}\r\n"
               "User-Agent: ferry-bench-idle\r\n\r\n").encode()
    request_sem = asyncio.Semaphore(args.request_parallel)
    ok = failed = 0

    async def one(reader, writer):
        nonlocal ok, failed
        async with request_sem:
            try:
                writer.write(request)
                await writer.drain()
                status, keep_alive = await asyncio.wait_for(read_response(reader), TIMEOUT_S)
                if 200 <= status < 300 and keep_alive:
                    ok += 1
                else:
                    failed += 1
            except (OSError, ValueError, IndexError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                failed += 1
                print(f"request failed: {e!r}", file=sys.stderr)

    await asyncio.gather(*(one(r, w) for r, w in conns))

    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"opened={len(conns)}\nok={ok}\nfailed={failed}\n")
    os.replace(tmp, args.ready_file)
    print(f"holding {len(conns)} connections ({ok} ok, {failed} failed)", file=sys.stderr)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.hold
    while loop.time() < deadline and not os.path.exists(args.release_file):
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)  # let pending FINs be read
    still_open = sum(1 for r, _ in conns if not r.at_eof())
    with open(args.ready_file, "a") as f:
        f.write(f"still_open={still_open}\n")
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
