"""Cross-check station's SMP serial framing against the PyPI `smp` package.

Input (argv[1]): JSON {"cases": [{"body": hex, "wire": hex}]} where `wire` is what station's
codec produced for `body` (an SMP message). For each case this script:
  - encodes `body` with smp.packet.encode (128-byte lines, the serial convention) and compares
    the bytes with station's `wire`;
  - decodes station's `wire` with smp.packet.decode and compares with `body`;
  - parses the 8-byte header with smp.header.Header (cases marked as SMP messages).
It then encodes a few messages of its own (OS echo requests built with smp.os_management) for
station to decode. Output (stdout): JSON {"results": [...], "python_wires": [...]}.
"""

import json
import sys

from smp import header as smphdr
from smp import os_management as smpos
from smp import packet as smppacket


def decode(wire: bytes) -> bytes:
    lines = [line + b"\n" for line in wire.split(b"\n") if line]
    dec = smppacket.decode()
    next(dec)
    for line in lines:
        try:
            dec.send(line)
        except StopIteration as done:
            return bytes(done.value)
    raise ValueError("packet did not complete")


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    results = []
    for c in cases:
        body = bytes.fromhex(c["body"])
        wire = bytes.fromhex(c["wire"])
        ours = b"".join(smppacket.encode(body, line_length=128))
        r = {
            "encode_equal": ours == wire,
            "decoded_equal": decode(wire) == body,
            "crc": smppacket.crc16_func(body),
        }
        if c.get("message"):
            h = smphdr.Header.loads(body[:8])
            r["header"] = {
                "op": int(h.op),
                "version": int(h.version),
                "length": h.length,
                "group": h.group_id,
                "seq": h.sequence,
                "command": h.command_id,
            }
        results.append(r)
    python_wires = []
    for i, text in enumerate(["hello from python", "x" * 300, ""]):
        req = smpos.EchoWriteRequest(d=text, sequence=i)
        wire = b"".join(smppacket.encode(req.BYTES, line_length=128))
        python_wires.append({"d": text, "seq": i, "wire": wire.hex()})
    json.dump({"results": results, "python_wires": python_wires}, sys.stdout)


if __name__ == "__main__":
    main()
