"""``bulkclaim demo``: start a sandbox in-process and claim the sample numbers against it."""

from __future__ import annotations

import asyncio
import csv
import uuid
from pathlib import Path

import click

from bulkclaim.connect import ClientSettings, connect_client
from bulkclaim.sandbox import TEST_CREDENTIALS, SandboxConfig, serve

__all__ = ["demo_command"]

_SAMPLE = Path("sample_inputs/numbers.csv")


@click.command("demo")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=_SAMPLE, show_default=True)
def demo_command(input_path: Path) -> None:
    """Claim the sample numbers against an in-process sandbox and print the result."""
    with input_path.open(newline="", encoding="utf-8") as handle:
        numbers = [row["phone_number"] for row in csv.DictReader(handle)]
    claimed = asyncio.run(_claim_all(numbers))
    click.echo(f"{'phone_number':<16} {'status':<10} phone_number_id")
    for number, (status, number_id) in claimed.items():
        click.echo(f"{number:<16} {status:<10} {number_id}")
    done = sum(1 for status, _ in claimed.values() if status == "CLAIMED")
    click.echo(f"{done}/{len(numbers)} numbers claimed")


async def _claim_all(numbers: list[str]) -> dict[str, tuple[str, str]]:
    config = SandboxConfig(claim_delay=0.05)
    instance_id = config.instance_ids[0]
    async with serve(config) as running:
        settings = ClientSettings(region=config.region, endpoint_url=running.endpoint_url,
                                  aws_access_key_id=TEST_CREDENTIALS.access_key_id,
                                  aws_secret_access_key=TEST_CREDENTIALS.secret_access_key)
        async with connect_client(settings) as client:
            result: dict[str, tuple[str, str]] = {}
            for number in numbers:
                await asyncio.sleep(0.5)  # the sandbox's default bucket refills 2 per second
                answer = await client.claim_phone_number(InstanceId=instance_id, PhoneNumber=number,
                                                         ClientToken=str(uuid.uuid4()))
                await asyncio.sleep(config.claim_delay)
                described = await client.describe_phone_number(PhoneNumberId=answer["PhoneNumberId"])
                status = described["ClaimedPhoneNumberSummary"].get("PhoneNumberStatus", {}).get("Status", "?")
                result[number] = (status, answer["PhoneNumberId"])
            return result
