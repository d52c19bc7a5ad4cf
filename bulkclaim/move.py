"""Moving numbers we hold to another instance or TDG (``bulkclaim move``, ``Claimer.move``).

A move has the shape of a claim (DESIGN §2): UpdatePhoneNumber takes a ClientToken, its result is
asynchronous (DescribePhoneNumber shows IN_PROGRESS, then CLAIMED on the destination, or FAILED),
and it has a 2/s burst-5 bucket of its own. So a move goes through the claim pipeline as it is (see
``engine.py``): it is a :class:`~bulkclaim.model.ClaimRequest` to the *destination* with ``move_from``
set (the source and the number's PhoneNumberId), and every guarantee of a claim holds for it — the
token is journaled (fsync'd) before the first request, every retry and every resumed run sends the
same token, a number the destination already holds whose token may have been sent is our move with
its answer lost (recorded, not sent again), and the journal is keyed by (destination, number).

What is a move's own is here: reading rows that name numbers (E.164, or a PhoneNumberId), and
resolving them with one ListPhoneNumbersV2 listing of the source and one of the destination (a
number moved by an earlier run is found on the destination, with the same id). Connect does not
carry a number's contact-flow association over: a row's ``contact_flow`` is associated once the
number is CLAIMED there, by the pipeline's flow stage (``associate.py``): a flow of the destination,
or a flow of the source (as ``export`` writes it), which stands for the destination's flow of the
same name (:class:`FlowMap`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from bulkclaim.calls import Api, CallFailed
from bulkclaim.contact_flows import FlowNames, flow_id, list_flow_names
from bulkclaim.inputs import file_rows, normalize_number
from bulkclaim.model import ClaimRequest, ConfigurationError, FatalServiceError, MoveFrom, Rejected, Target
from bulkclaim.reconcile import Owned, sweep

__all__ = ["FlowMap", "MoveRow", "as_move_rows", "read_move_rows", "resolve_moves"]

_NUMBER_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class MoveRow:
    """One input row of a move: a number (E.164) or its PhoneNumberId (or both, as ``export`` writes),
    where the row came from (``file:line``) and the contact flow it should have on the destination."""

    source: str
    phone_number: str | None = None
    phone_number_id: str | None = None
    contact_flow: str | None = None


def read_move_rows(paths: Iterable[Path], *, fmt: str | None = None,
                   default_region: str | None = None) -> Iterator[MoveRow | Rejected]:
    """Every row of every file (CSV, text, JSON Lines; columns ``phone_number``, ``phone_number_id``,
    ``contact_flow``; other columns, such as ``description`` and ``tags``, are not part of a move)."""
    for path in paths:
        for source, fields in file_rows(path, fmt):
            yield fields if isinstance(fields, Rejected) else move_row(fields, source, default_region)


def move_row(fields: Mapping[str, Any], source: str, default_region: str | None) -> MoveRow | Rejected:
    """One row's cells as a move (a text file's line may be a number or a PhoneNumberId)."""
    raw = str(fields.get("phone_number") or "").strip()
    number_id = str(fields.get("phone_number_id") or "").strip() or None
    if raw and number_id is None and _NUMBER_ID.fullmatch(raw):
        raw, number_id = "", raw
    if number_id is not None and not _NUMBER_ID.fullmatch(number_id):
        return Rejected(raw=number_id, source=source, reason=f"phone_number_id {number_id!r} is not a PhoneNumberId")
    number = None
    if raw:
        try:
            number = normalize_number(raw, default_region)
        except ValueError as exc:
            return Rejected(raw=raw, source=source, reason=str(exc))
    elif number_id is None:
        return Rejected(raw="", source=source, reason="no phone_number or phone_number_id")
    return MoveRow(source, number, number_id, str(fields.get("contact_flow") or "").strip() or None)


def as_move_rows(rows: Iterable[MoveRow | Rejected | str], default_region: str | None) -> Iterator[MoveRow | Rejected]:
    """Library rows: strings are numbers or PhoneNumberIds (``move:<n>`` in reports)."""
    for index, row in enumerate(rows, start=1):
        yield move_row({"phone_number": row}, f"move:{index}", default_region) if isinstance(row, str) else row


async def resolve_moves(api: Api, source: Target, destination: Target, rows: Iterable[MoveRow | Rejected], *,
                        stop: anyio.Event | None = None, flow_names: FlowNames | None = None,
                        ) -> list[ClaimRequest | Rejected]:
    """Each row as a move request to ``destination``, or rejected (invalid) if neither the source nor
    the destination holds its number, or its ``contact_flow`` is not a flow of the destination (an id,
    an ARN, or with ``flow_names`` a name). Raises FatalServiceError when a target cannot be listed (an
    unknown target among them): nothing is sent then."""
    if source.key == destination.key:
        raise ConfigurationError(f"the source and the destination are the same target ({source.key})")
    rows = list(rows)
    on_source = await _listing(api, source, stop)
    on_destination = await _listing(api, destination, stop)
    by_id = {owned.phone_number_id: number for listing in (on_destination, on_source)
             for number, owned in listing.items()}
    flows = None
    if any(isinstance(row, MoveRow) and row.contact_flow for row in rows):
        flows = await FlowMap.between(api, source, destination)
    return [_request(row, source, destination, on_source, on_destination, by_id, flows, flow_names) for row in rows]


def _request(row: MoveRow | Rejected, source: Target, destination: Target, on_source: dict[str, Owned],
             on_destination: dict[str, Owned], by_id: dict[str, str], flows: FlowMap | None,
             flow_names: FlowNames | None) -> ClaimRequest | Rejected:
    if isinstance(row, Rejected):
        return replace(row, target=destination)
    number = row.phone_number or by_id.get(row.phone_number_id or "")
    if number is None:
        return Rejected(raw=row.phone_number_id or "", source=row.source, target=destination,
                        reason=f"no number with PhoneNumberId {row.phone_number_id} on {source.key} "
                               f"or {destination.key}")
    held = on_source.get(number) or on_destination.get(number)  # on the destination: moved by an earlier run
    if held is None:
        return Rejected(raw=number, source=row.source, target=destination,
                        reason=f"{source.key} does not hold {number} (nor does {destination.key})")
    if row.phone_number_id is not None and row.phone_number_id != held.phone_number_id:
        return Rejected(raw=number, source=row.source, target=destination,
                        reason=f"{number} has PhoneNumberId {held.phone_number_id}, not {row.phone_number_id}")
    try:  # Connect does not carry a flow association over: it is made again on the destination
        flow = None if row.contact_flow is None else (
            (flows.on_destination(row.contact_flow) if flows else None)
            or flow_id(row.contact_flow, destination, flow_names))
    except ValueError as exc:
        return Rejected(raw=number, source=row.source, target=destination, reason=str(exc))
    return ClaimRequest(number, destination, source=row.source, contact_flow=flow,
                        move_from=MoveFrom(source, held.phone_number_id))


@dataclass(frozen=True)
class FlowMap:
    """The source's flows and the destination's flow of the same name: a row may name its number's flow
    on the source (as ``export`` of the source writes it), and the move associates the destination's
    flow of that name (a migration recreates its flows there; flows belong to an instance)."""

    source: Target
    destination: Target
    source_names: dict[str, str]  # source flow id -> name
    to_destination: dict[str, str]  # source flow id -> the destination's flow id of the same name

    @classmethod
    async def between(cls, api: Api, source: Target, destination: Target) -> FlowMap | None:
        """One ListContactFlows of each instance (``None`` unless both are instances)."""
        if source.instance is None or destination.instance is None:
            return None
        try:
            on_source = await list_flow_names(api, source.instance)
            on_destination = await list_flow_names(api, destination.instance)
        except CallFailed as failed:
            raise FatalServiceError(failed.classified.code, "cannot list the contact flows: "
                                                            f"{failed.classified.message}") from failed
        return cls(source, destination, {flow: name for name, flow in on_source.items()},
                   {flow: on_destination[name] for name, flow in on_source.items() if name in on_destination})

    def on_destination(self, value: str) -> str | None:
        """The destination's flow for a row naming a flow of the source (id or ARN); ``None`` if the row
        does not name one. ValueError if the destination has no flow of that name."""
        try:
            named = flow_id(value, self.source)
        except ValueError:
            return None
        if named not in self.source_names:
            return None
        found = self.to_destination.get(named)
        if found is None:
            raise ValueError(f"contact flow {named} is {self.source.key}'s flow {self.source_names[named]!r}; "
                             f"{self.destination.key} has no flow of that name")
        return found


async def _listing(api: Api, target: Target, stop: anyio.Event | None) -> dict[str, Owned]:
    try:
        return await sweep(api, target, stop=stop)
    except CallFailed as failed:
        raise FatalServiceError(failed.classified.code, f"cannot list the numbers of {target.key}: "
                                                        f"{failed.classified.message}") from failed

