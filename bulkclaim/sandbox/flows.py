"""The sandbox's contact flows: seeded flows per instance, and which flow each phone number is associated with.

Each instance gets ``SandboxConfig.flows_per_instance`` flows, their ids drawn from the sandbox seed
(so a seeded sandbox has the same flows every run) and named ``"Inbound flow 1"``, ``"Inbound flow 2"``...
What the real service does, and what the sandbox chose where the reference is silent:

- AssociatePhoneNumberContactFlow (PUT, no ClientToken) sets the flow of a number claimed to the
  instance named by ``InstanceId``; associating again replaces the flow (the same flow again changes
  nothing, which is why the call needs no token). A flow id that is not a flow *of that instance*
  answers ResourceNotFoundException, as a flow of another instance does on the real service.
- A number that is not ours, or not claimed to that instance, answers ResourceNotFoundException; one
  still IN_PROGRESS (or FAILED) answers InvalidParameterException. The real answers for these two cases
  are not documented: they are the sandbox's choice among the errors the model lists.
- DisassociatePhoneNumberContactFlow removes the association (an absent one: nothing to do).
- ListFlowAssociations lists ``{ResourceId: phone number ARN, FlowId: flow ARN, ResourceType:
  VOICE_PHONE_NUMBER}`` (both members are ARNs in the model).
- A released number loses its association: releasing gives the number back to the inventory, and
  the flow belongs to the instance, not to the number. Connect's reference does not say so in as many
  words; the sandbox does the only thing consistent with a number that is no longer ours (whoever claims
  it next starts with no flow). A move (UpdatePhoneNumber) also drops it: "the flow association does
  not move with the number" (DESIGN §2).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from bulkclaim.sandbox.records import ServiceError, invalid, not_found

__all__ = ["VOICE", "ContactFlow", "FlowBook", "flow_name", "instance_of", "not_settled"]

VOICE = "VOICE_PHONE_NUMBER"


def flow_name(index: int) -> str:
    """The name of an instance's ``index``-th seeded flow (1-based)."""
    return f"Inbound flow {index}"


@dataclass(frozen=True)
class ContactFlow:
    id: str
    arn: str
    name: str
    instance_id: str

    def summary(self) -> dict[str, Any]:
        return {"Id": self.id, "Arn": self.arn, "Name": self.name, "ContactFlowType": "CONTACT_FLOW",
                "ContactFlowState": "ACTIVE", "ContactFlowStatus": "PUBLISHED"}


class FlowBook:
    """The flows of every instance and the current association of each phone number (by number id)."""

    def __init__(self, arn_prefix: str, instance_ids: tuple[str, ...], per_instance: int, seed: int) -> None:
        rng = random.Random(f"flows-{seed}")  # its own stream: number ids stay as they were
        self._arn_prefix = arn_prefix
        self._flows: dict[str, dict[str, ContactFlow]] = {}
        for instance_id in instance_ids:
            flows = {}
            for index in range(1, per_instance + 1):
                flow_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                flows[flow_id] = ContactFlow(flow_id, f"{arn_prefix}:instance/{instance_id}/contact-flow/{flow_id}",
                                             flow_name(index), instance_id)
            self._flows[instance_id] = flows
        self._associated: dict[str, ContactFlow] = {}  # phone number id -> flow

    def add(self, instance_id: str, flow_id: str, name: str) -> ContactFlow:
        """Create a flow in an instance (as a user publishing one in the console), e.g. between two runs."""
        arn_prefix = self._arn_prefix
        flow = ContactFlow(flow_id, f"{arn_prefix}:instance/{instance_id}/contact-flow/{flow_id}", name, instance_id)
        self._flows.setdefault(instance_id, {})[flow_id] = flow
        return flow

    def flows_of(self, instance_id: str) -> list[ContactFlow]:
        """The flows of an instance (404 for an instance the sandbox does not have)."""
        flows = self._flows.get(instance_id)
        if flows is None:
            raise not_found(f"Instance not found: {instance_id}")
        return list(flows.values())

    def flow(self, instance_id: str, flow_id: str) -> ContactFlow:
        found = self._flows.get(instance_id, {}).get(flow_id)
        if found is None:
            raise not_found(f"Contact flow not found: {flow_id} (instance {instance_id})")
        return found

    def associate(self, phone_number_id: str, flow: ContactFlow) -> None:
        self._associated[phone_number_id] = flow

    def disassociate(self, phone_number_id: str) -> None:
        self._associated.pop(phone_number_id, None)

    def associated(self, phone_number_id: str) -> ContactFlow | None:
        return self._associated.get(phone_number_id)

    def associations_of(self, instance_id: str) -> list[tuple[str, ContactFlow]]:
        """(phone number id, flow) of every number associated with a flow of ``instance_id``."""
        return [(number_id, flow) for number_id, flow in self._associated.items() if flow.instance_id == instance_id]


def instance_of(raw: Any) -> str:
    """The instance id in an ``InstanceId`` member, which may be the instance's ARN."""
    text = str(raw)
    return text.rsplit("/", 1)[-1] if text.startswith("arn:") and ":instance/" in text else text


def not_settled(reference: str) -> ServiceError:
    return invalid(f"The phone number {reference} is not claimed (its claim has not completed).")
