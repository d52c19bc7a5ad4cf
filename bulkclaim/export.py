"""What a target holds, as rows a ``bulkclaim claim`` (or ``move``) input reads: the inventory a
migration starts from.

One row per CLAIMED number of the target: ``phone_number``, ``phone_number_id``, ``description``,
``tags`` and ``contact_flow`` (the id of its associated flow). ListPhoneNumbersV2 lists the numbers
(with their descriptions); DescribePhoneNumber gives each one's tags and status (numbers still
being claimed or released are left out); ListFlowAssociations (VOICE_PHONE_NUMBER) gives every
association of the instance in a few pages. A traffic distribution group has no flows of its own:
its rows have no ``contact_flow``. Every call goes through its API's limiter and retries.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from bulkclaim.calls import Api, CallFailed
from bulkclaim.model import Target

__all__ = ["COLUMNS", "Held", "held_numbers", "write_held"]

COLUMNS = ("phone_number", "phone_number_id", "description", "tags", "contact_flow")


@dataclass(frozen=True)
class Held:
    """One number a target holds, as an input row."""

    phone_number: str
    phone_number_id: str
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    contact_flow: str | None = None

    def as_row(self) -> dict[str, Any]:
        return {"phone_number": self.phone_number, "phone_number_id": self.phone_number_id,
                "description": self.description, "tags": self.tags or None, "contact_flow": self.contact_flow}


async def held_numbers(api: Api, target: Target) -> list[Held]:
    """The CLAIMED numbers ``target`` holds, in the order the service lists them."""
    listed: list[dict[str, Any]] = []
    async for page in api.pages("ListPhoneNumbersV2", "list_phone_numbers_v2", "ListPhoneNumbersSummaryList",
                                stop=None, MaxResults=1000, **target.request_params()):
        listed += page
    flows = await _associations(api, target.instance) if target.instance else {}
    held = []
    for row in listed:
        try:
            answer = await api.call("DescribePhoneNumber", "describe_phone_number", PhoneNumberId=row["PhoneNumberId"])
        except CallFailed as failed:
            if failed.classified.code == "ResourceNotFoundException":  # released since it was listed
                continue
            raise
        summary = answer["ClaimedPhoneNumberSummary"]
        if summary.get("PhoneNumberStatus", {}).get("Status") != "CLAIMED":
            continue
        held.append(Held(row["PhoneNumber"], row["PhoneNumberId"], summary.get("PhoneNumberDescription") or None,
                         dict(summary.get("Tags") or {}), flows.get(row["PhoneNumberArn"])))
    return held


async def _associations(api: Api, instance: str) -> dict[str, str]:
    """Phone number ARN -> the id of its flow, for every voice number of ``instance`` with a flow."""
    found: dict[str, str] = {}
    async for page in api.pages("ListFlowAssociations", "list_flow_associations", "FlowAssociationSummaryList",
                                InstanceId=instance, ResourceType="VOICE_PHONE_NUMBER", MaxResults=1000):
        for row in page:
            found[row["ResourceId"]] = str(row["FlowId"]).rsplit("/", 1)[-1]  # the flow's ARN ends in its id
    return found


def write_held(handle: IO[str], fmt: str, held: Iterable[Held]) -> int:
    """Write ``held`` as a claim input of format ``fmt`` (csv or jsonl); return how many rows. In a CSV the
    tags are a JSON object, which the input reader takes as it is."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for number in held:
            row = number.as_row()
            writer.writerow({**row, "tags": json.dumps(row["tags"], sort_keys=True) if row["tags"] else ""})
            count += 1
    else:
        for number in held:
            handle.write(json.dumps({k: v for k, v in number.as_row().items() if v is not None},
                                    ensure_ascii=False) + "\n")
            count += 1
    return count
