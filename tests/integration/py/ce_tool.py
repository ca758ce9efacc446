#!/usr/bin/env python3
"""CloudEvents producer and checker for Ferry's eventing integration tests.

Uses the PyPI `cloudevents` SDK (installed by .ci/run into target/pyenv)
as the third-party implementation:

  ce_tool.py send URL MODE COUNT PREFIX EXPECTED_OUT
      Builds COUNT varied events with the SDK and POSTs them to URL in MODE
      (binary | structured | batch). Writes what was sent (attributes and
      data) to EXPECTED_OUT as JSON. Exits non-zero unless every POST got 202.

  ce_tool.py check EXPECTED RECEIVED
      RECEIVED is a JSON list of {"headers": {...}, "body_hex": "..."}: the
      HTTP requests a subscriber got. Each is parsed with the SDK's
      from_http and compared with the sent event of the same id:
      attributes equal, data byte for byte (JSON data: the same JSON
      value). Exits non-zero and says what differs otherwise.

The SDK (1.11) does not percent-encode ce-* header values as the HTTP
binding requires of senders (nor decode them on receipt), so this tool
applies the binding's encoding when sending and decoding when parsing.
"""

import base64
import json
import sys
import urllib.parse
import urllib.request

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

# HTTP binding 3.1.3.2: space, '"', '%' and anything outside printable
# ASCII are percent-encoded (UTF-8).
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def encode_header(v):
    return urllib.parse.quote(v, safe=_SAFE, encoding="utf-8")


def make_events(count, prefix):
    evs = []
    for i in range(count):
        attrs = {
            "id": f"{prefix}-{i}",
            "source": f"/ferry/tests/{prefix}",
            "type": "com.example.test" if i % 2 == 0 else "com.example.other",
            "subject": f'caf\u00e9 "{i}" 100% \u2603',
            "time": "2024-02-29T12:34:56.789Z",
            "ext1": f"value {i}",
            "partitionkey": f"k{i % 3}",
        }
        kind = i % 4
        if kind == 0:
            attrs["datacontenttype"] = "application/octet-stream"
            data = bytes([0, 1, 2, 0xFF, 0xFE, 0x80, 10, 13]) + bytes([i % 256]) * (i % 50)
        elif kind == 1:
            attrs["datacontenttype"] = "application/json"
            data = {"n": i, "s": "x\u00e9\n", "list": [1, 2.5, None, True]}
        elif kind == 2:
            attrs["datacontenttype"] = "text/plain; charset=utf-8"
            data = f"plain text {i} \u00fcml\u00e4ut"
            attrs["dataschema"] = "https://example.com/schema/v1"
        else:
            data = None
        evs.append(CloudEvent(attrs, data))
    return evs


def describe(ev):
    attrs = {k: str(v) for k, v in ev.get_attributes().items()}
    data = ev.get_data()
    out = {"attrs": attrs}
    if isinstance(data, (dict, list)):
        out["json"] = data
    elif isinstance(data, str):
        out["data_hex"] = data.encode("utf-8").hex()
    elif data is not None:
        out["data_hex"] = bytes(data).hex()
    return out


def post(url, headers, body):
    req = urllib.request.Request(url, data=body, method="POST")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def send(url, mode, count, prefix, expected_out):
    evs = make_events(count, prefix)
    described = [describe(e) for e in evs]
    bad = []
    if mode == "batch":
        body = json.dumps([to_dict_wire(e) for e in evs]).encode()
        status, text = post(url, {"content-type": "application/cloudevents-batch+json"}, body)
        if status != 202:
            bad.append((status, text))
    else:
        for e, d in zip(evs, described):
            if mode == "binary":
                headers, body = to_binary(e)
                # Byte-exact means: the bytes this producer put in the body
                # (the SDK JSON-encodes str data) are the bytes delivered.
                if "json" not in d and body:
                    d["data_hex"] = body.hex()
                headers = {
                    k: encode_header(v) if k.lower().startswith("ce-") else v
                    for k, v in headers.items()
                }
            else:
                headers, body = to_structured(e)
            status, text = post(url, headers, body)
            if status != 202:
                bad.append((status, text))
    with open(expected_out, "w") as f:
        json.dump(described, f)
    if bad:
        print(f"{len(bad)} POSTs not accepted, first: {bad[0]}", file=sys.stderr)
        sys.exit(1)


def to_dict_wire(ev):
    """One event of a batch: the SDK's structured JSON object."""
    _, body = to_structured(ev)
    return json.loads(body)


def check(expected_path, received_path):
    with open(expected_path) as f:
        expected = {e["attrs"]["id"]: e for e in json.load(f)}
    with open(received_path) as f:
        received = json.load(f)
    seen = set()
    problems = []
    for r in received:
        headers = {
            k: urllib.parse.unquote(v, encoding="utf-8") if k.lower().startswith("ce-") else v
            for k, v in r["headers"].items()
        }
        body = bytes.fromhex(r["body_hex"])
        ev = from_http(headers, body, data_unmarshaller=lambda b: b)
        got = describe(ev)
        eid = got["attrs"].get("id")
        want = expected.get(eid)
        if want is None:
            problems.append(f"unexpected event id {eid}")
            continue
        seen.add(eid)
        if got["attrs"] != want["attrs"]:
            problems.append(f"{eid}: attributes differ: got {got['attrs']} want {want['attrs']}")
        if "json" in want:
            raw = bytes.fromhex(got.get("data_hex", ""))
            if json.loads(raw) != want["json"]:
                problems.append(f"{eid}: JSON data differs: {raw!r}")
        elif got.get("data_hex") != want.get("data_hex"):
            problems.append(
                f"{eid}: data differs: got {got.get('data_hex')} want {want.get('data_hex')}"
            )
    missing = sorted(set(expected) - seen)
    if missing:
        problems.append(f"never delivered: {missing}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"ok: {len(seen)} events match")


def main():
    cmd = sys.argv[1]
    if cmd == "send":
        send(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
    elif cmd == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
