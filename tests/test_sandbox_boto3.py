"""A stock synchronous boto3 client against ``bulkclaim sandbox``, configured by the banner's exports only."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

BULKCLAIM = [sys.executable, "-m", "bulkclaim"]

# Runs in a process whose environment is the banner's exports and nothing else (HOME points at an
# empty folder, so no ~/.aws file is read): what a user pasting the exports into a shell gets.
SCRIPT = """
import json, os, time, uuid
import boto3

connect = boto3.client("connect")
instance = os.environ["INSTANCE_ID"]
search = connect.search_available_phone_numbers(InstanceId=instance, PhoneNumberCountryCode="US",
                                                PhoneNumberType="DID", MaxResults=1)
number = search["AvailableNumbersList"][0]["PhoneNumber"]
claimed = connect.claim_phone_number(InstanceId=instance, PhoneNumber=number, ClientToken=str(uuid.uuid4()))
for _ in range(100):
    status = connect.describe_phone_number(PhoneNumberId=claimed["PhoneNumberId"])[
        "ClaimedPhoneNumberSummary"]["PhoneNumberStatus"]["Status"]
    if status != "IN_PROGRESS":
        break
    time.sleep(0.05)
listed = [n["PhoneNumber"] for n in connect.list_phone_numbers_v2(InstanceId=instance)["ListPhoneNumbersSummaryList"]]
released = connect.release_phone_number(PhoneNumberId=claimed["PhoneNumberId"])
quota = boto3.client("service-quotas").get_service_quota(ServiceCode="connect", QuotaCode="L-8F812903")
print(json.dumps({"number": number, "status": status, "listed": listed, "quota": quota["Quota"]["Value"],
                  "released": released["ResponseMetadata"]["HTTPStatusCode"]}))
"""


def test_boto3_works_with_only_the_banner_exports(tmp_path: Path) -> None:
    proc = subprocess.Popen([*BULKCLAIM, "sandbox", "--port", "0", "--rate", "50", "--claim-delay", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(11)]
        exports = dict(re.findall(r"export (\w+)=(\S+)", "".join(banner)))
        assert "AWS_ENDPOINT_URL_CONNECT" in exports, banner
        result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                                env={**exports, "HOME": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["status"] == "CLAIMED" and answer["listed"] == [answer["number"]]
        assert answer["released"] == 200 and answer["quota"] == 10_000.0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
