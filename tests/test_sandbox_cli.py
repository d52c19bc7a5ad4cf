"""``bulkclaim sandbox`` as users run it: a real subprocess, a real client, a real signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio

from bulkclaim.connect import ClientSettings, connect_client
from tests.support import INSTANCE_ID

BULKCLAIM = [sys.executable, "-m", "bulkclaim"]


async def _claim_one(settings: ClientSettings) -> str:
    async with connect_client(settings) as client:
        answer = await client.claim_phone_number(InstanceId=INSTANCE_ID, PhoneNumber="+12062000000",
                                                 ClientToken=str(uuid.uuid4()))
        return answer["PhoneNumberId"]


def test_sandbox_command_serves_until_sigint() -> None:
    proc = subprocess.Popen([*BULKCLAIM, "sandbox", "--port", "0", "--rate", "50", "--seed", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, first
        lines = [proc.stdout.readline() for _ in range(10)]
        exports = dict(re.findall(r"export (\w+)=(\S+)", "".join(lines)))
        assert exports["AWS_ENDPOINT_URL_CONNECT"] == match.group(1)
        assert exports["AWS_DEFAULT_REGION"] == exports["AWS_REGION"]  # botocore reads only AWS_DEFAULT_REGION
        assert exports["INSTANCE_ID"] == INSTANCE_ID  # the README's walk-through uses $INSTANCE_ID
        settings = ClientSettings(region=exports["AWS_REGION"], endpoint_url=match.group(1),
                                  aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                                  aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        assert anyio.run(_claim_one, settings)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_sandbox_command_bad_inventory_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run([*BULKCLAIM, "sandbox", "--inventory", "US:DID:+44:10"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 2
    assert "not in country US" in result.stderr
    assert "Traceback" not in result.stderr
