"""Contact flows as input rows name them: a flow id, a flow ARN, or (``--resolve-flow-names``) a name.

A flow belongs to one instance: its ARN is ``arn:aws:connect:REGION:ACCOUNT:instance/INSTANCE/contact-flow/ID``,
and AssociatePhoneNumberContactFlow takes the id with the instance. An ARN naming another instance
than the row's target is refused here (the service would answer "not found" for every such number).
Names are resolved once per run and instance with ListContactFlows (:func:`list_flow_names`), before
anything is sent; a name the instance does not have stops the run naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bulkclaim.model import Target

if TYPE_CHECKING:
    from bulkclaim.calls import Api

__all__ = ["FlowNames", "flow_id", "is_flow_name", "list_flow_names"]

#: instance id -> flow name -> flow id
FlowNames = Mapping[str, Mapping[str, str]]

_FLOW_ARN = re.compile(r"^arn:aws[\w-]*:connect:[^:]*:\d{12}:instance/([^/]+)/contact-flow/([^/]+)$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MAX_ID = 500  # the model's ContactFlowId length


def is_flow_name(value: str) -> bool:
    """Whether an input's ``contact_flow`` is a name (neither a flow id nor an ARN)."""
    return not (_UUID.fullmatch(value) or value.startswith("arn:"))


def flow_id(value: Any, target: Target, names: FlowNames | None = None) -> str:
    """The flow id a row's ``contact_flow`` names for ``target``; ValueError says why there is none."""
    text = str(value).strip()
    instance = target.instance
    if instance is None:
        raise ValueError("contact_flow needs an instance target (a flow belongs to an instance); "
                         "associate numbers of a traffic distribution group per instance")
    if _UUID.fullmatch(text):
        return text
    if text.startswith("arn:"):
        match = _FLOW_ARN.fullmatch(text)
        if match is None:
            raise ValueError(f"contact_flow {text[:100]!r} is not a contact flow ARN "
                             "(arn:aws:connect:REGION:ACCOUNT:instance/ID/contact-flow/ID)")
        if match.group(1) != instance:
            raise ValueError(f"contact_flow {text[:100]!r} is a flow of instance {match.group(1)}, "
                             f"not of the row's target {instance}")
        return match.group(2)
    if names is None:
        raise ValueError(f"contact_flow {text[:100]!r} is not a flow id or ARN (give --resolve-flow-names "
                         "to name flows by name)")
    found = names.get(instance, {}).get(text)
    if found is None or len(found) > _MAX_ID:
        raise ValueError(f"contact flow {text[:100]!r} not found in instance {instance}")
    return found


async def list_flow_names(api: Api, instance: str) -> dict[str, str]:
    """Every flow of ``instance`` by name (ListContactFlows, all pages, through ``api``'s limiter and
    retries). A name two flows share resolves to neither: the row must give the id."""
    names: dict[str, str] = {}
    shared: set[str] = set()
    async for page in api.pages("ListContactFlows", "list_contact_flows", "ContactFlowSummaryList",
                                InstanceId=instance, MaxResults=1000):
        for flow in page:
            name, found = flow.get("Name"), flow.get("Id")
            if not name or not found:
                continue
            if name in names and names[name] != found:
                shared.add(name)
            names[name] = found
    return {name: found for name, found in names.items() if name not in shared}
