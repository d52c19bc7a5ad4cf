"""``--resolve-flow-names``: contact flows named by name in the input, resolved once per run.

Every flow name the input uses is looked up with ListContactFlows, once per instance, before
anything is planned or sent; a name the instance does not have stops the command (exit 2) naming
the file and line of its first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bulkclaim.cli_common import EXIT_FATAL, EXIT_USAGE, client_settings, fail
from bulkclaim.contact_flows import FlowNames, list_flow_names
from bulkclaim.model import FatalServiceError, Target

__all__ = ["resolve_flow_names"]


def resolve_flow_names(inputs: tuple[Path, ...], target: Target | None, opts: dict[str, Any]) -> FlowNames | None:
    """The flows of each instance the input names by name (``None`` without ``--resolve-flow-names``)."""
    if not opts.get("resolve_flow_names"):
        return None
    import anyio

    from bulkclaim.calls import CallFailed
    from bulkclaim.claimer import connect_api
    from bulkclaim.inputs import flow_names_used

    used = flow_names_used(inputs, target=target, fmt=opts["input_format"])
    if not used:
        return {}

    async def look_up() -> dict[str, dict[str, str]]:
        async with connect_api(client_settings(opts), outage_timeout=opts["outage_timeout"]) as api:
            return {instance: await list_flow_names(api, instance) for instance in used}

    try:
        flows = anyio.run(look_up)
    except FatalServiceError as exc:
        fail(f"cannot list the contact flows (--resolve-flow-names): {exc}", EXIT_FATAL)
    except CallFailed as exc:
        fail(f"cannot list the contact flows (--resolve-flow-names): {exc}", EXIT_FATAL)
    for instance, names in used.items():
        for name, source in names.items():
            if name not in flows[instance]:
                fail(f"{source}: contact flow {name!r} not found in instance {instance} (ListContactFlows; a name "
                     "two flows share must be given by id); nothing was sent", EXIT_USAGE)
    return flows
