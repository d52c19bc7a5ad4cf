"""The README's embedding example, run as written against the sandbox."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bulkclaim.sandbox import TEST_CREDENTIALS
from tests.support import INSTANCE_ID, sandbox_env

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(name: str) -> str:
    match = re.search(rf"<!-- readme-example: {name} -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


async def test_embedding_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with sandbox_env(claim_delay=0.0) as env:
        for name, value in {"AWS_ENDPOINT_URL_CONNECT": env.endpoint_url, "AWS_REGION": "us-east-1",
                            "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS.access_key_id,
                            "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS.secret_access_key}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        namespace: dict[str, Any] = {}
        exec(compile(readme_example("embedding"), str(README), "exec"), namespace)
        numbers = ["+12062000000", "+12062000001", "+12062000001"]
        claimed = await namespace["provision"](INSTANCE_ID, numbers)
    assert set(claimed) == {"+12062000000", "+12062000001"}
    assert claimed == {e.phone_number: e.phone_number_id for e in env.sandbox.ledger}
    assert (tmp_path / "provisioning.journal").exists()
