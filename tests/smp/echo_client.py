"""Drive a device-link unit with `smpclient` over a serial port: MCUmgr params, then OS echo.

Usage: echo_client.py PORT TEXT. Prints one JSON line {"echo": ..., "buf_size": ...}.
"""

import asyncio
import json
import sys

from smpclient import SMPClient
from smpclient.generics import success
from smpclient.requests.os_management import EchoWrite, MCUMgrParametersRead
from smpclient.transport.serial import SMPSerialTransport


async def main(port: str, text: str) -> None:
    async with SMPClient(SMPSerialTransport(), port, timeout_s=5.0) as client:
        params = await client.request(MCUMgrParametersRead())
        if not success(params):
            raise SystemExit(f"params failed: {params}")
        echo = await client.request(EchoWrite(d=text))
        if not success(echo):
            raise SystemExit(f"echo failed: {echo}")
        print(json.dumps({"echo": echo.r, "buf_size": params.buf_size}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
