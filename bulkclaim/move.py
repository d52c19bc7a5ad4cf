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

__all__ = ["FlowMap", "MoveRow", "as_move_rows", "destinations", "read_move_rows", "resolve_moves"]

_NUMBER_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class MoveRow:
    """One input row of a move: a number (E.164) or its PhoneNumberId (or both, as ``export`` writes),
    where the row came from (``file:line``), the contact flow it should have on the destination, and
    the row's own destination (columns ``to_instance_id`` / ``to_target_arn``; None: the run's)."""

    source: str
    phone_number: str | None = None
    phone_number_id: str | None = None
    contact_flow: str | None = None
    destination: Target | None = None


def read_move_rows(paths: Iterable[Path], *, fmt: str | None = None,
                   default_region: str | None = None) -> Iterator[MoveRow | Rejected]:
    """Every row of every file (CSV, text, JSON Lines; columns ``phone_number``, ``phone_number_id``,
    ``contact_flow``, ``to_instance_id`` or ``to_target_arn``; other columns, such as ``description`` and
    ``tags``, are not part of a move)."""
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
    instance, arn = (str(fields.get(column) or "").strip() or None for column in ("to_instance_id", "to_target_arn"))
    if instance and arn:
        return Rejected(raw=raw or str(number_id), source=source,
                        reason="give one of to_instance_id or to_target_arn, not both")
    destination = Target(instance_id=instance) if instance else Target(target_arn=arn) if arn else None
    return MoveRow(source, number, number_id, str(fields.get("contact_flow") or "").strip() or None, destination)


def as_move_rows(rows: Iterable[MoveRow | Rejected | str], default_region: str | None) -> Iterator[MoveRow | Rejected]:
    """Library rows: strings are numbers or PhoneNumberIds (``move:<n>`` in reports)."""
    for index, row in enumerate(rows, start=1):
        yield move_row({"phone_number": row}, f"move:{index}", default_region) if isinstance(row, str) else row


def destinations(rows: Iterable[MoveRow | Rejected], destination: Target | None) -> list[Target]:
    """The destinations of ``rows`` (``destination`` first, for the rows without their own; else in the
    order rows name them). ValueError naming the first row without one when ``destination`` is None, or
    when no row names one."""
    found: dict[str, Target] = {} if destination is None else {destination.key: destination}
    for row in rows:
        if not isinstance(row, MoveRow):
            continue
        if row.destination is None and destination is None:
            raise ValueError(f"{row.source}: no destination: give to_instance_id or to_target_arn on every row, "
                             "or --to-instance-id / --to-target-arn for the rows without one")
        if row.destination is not None:
            found.setdefault(row.destination.key, row.destination)
    if not found:
        raise ValueError("no destination: give --to-instance-id or --to-target-arn, or to_instance_id / "
                         "to_target_arn columns")
    return list(found.values())


async def resolve_moves(api: Api, source: Target, destination: Target | None, rows: Iterable[MoveRow | Rejected], *,
                        stop: anyio.Event | None = None, flow_names: FlowNames | None = None,
                        ) -> list[ClaimRequest | Rejected]:
    """Each row as a move request to its destination (the row's own, else ``destination``), or rejected
    (invalid) if neither the source nor that destination holds its number, its destination is the
    source, or its ``contact_flow`` is not a flow of its destination (an id, an ARN, or with
    ``flow_names`` a name). One listing of the source and of each destination. Raises
    ConfigurationError for a row without a destination when ``destination`` is None (naming the row),
    FatalServiceError when a target cannot be listed (an unknown target among them): nothing is sent."""
    if destination is not None and source.key == destination.key:
        raise ConfigurationError(f"the source and the destination are the same target ({source.key})")
    rows = list(rows)
    try:
        destinations(rows, destination)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    wanted = {row.destination.key: row.destination for row in rows if isinstance(row, MoveRow) and row.destination}
    targets = {**({} if destination is None else {destination.key: destination}), **wanted}
    targets.pop(source.key, None)  # rows naming the source are invalid, never listed twice
    on_source = await _listing(api, source, stop)
    listings = {key: await _listing(api, target, stop) for key, target in targets.items()}
    by_id = {owned.phone_number_id: number for listing in (*listings.values(), on_source)
             for number, owned in listing.items()}
    flows: dict[str, FlowMap | None] = {}
    for key, target in targets.items():
        if any(isinstance(row, MoveRow) and row.contact_flow and getattr(row.destination or destination, "key", None)
               == key for row in rows):
            flows[key] = await FlowMap.between(api, source, target)
    resolved: list[ClaimRequest | Rejected] = []
    going: dict[str, tuple[str, str]] = {}  # number -> (its destination, the row that sends it there)
    for row in rows:
        to = row.destination or destination if isinstance(row, MoveRow) else destination
        if isinstance(row, MoveRow) and to is not None and to.key == source.key:
            resolved.append(Rejected(raw=row.phone_number or row.phone_number_id or "", source=row.source, target=to,
                                     reason=f"its destination is its source ({source.key})"))
            continue
        request = _request(row, source, to, on_source, listings.get(to.key, {}) if to else {}, by_id,
                           flows.get(to.key) if to else None, flow_names)
        if isinstance(request, ClaimRequest):  # one destination per number: a second would move it again
            first = going.setdefault(request.phone_number, (request.target.key, request.source))
            if first[0] != request.target.key:
                request = Rejected(raw=request.phone_number, source=request.source, target=request.target,
                                   reason=f"{request.phone_number} is moved to {first[0]} by {first[1]}: "
                                          "one destination per number")
        resolved.append(request)
    return resolved


def _request(row: MoveRow | Rejected, source: Target, destination: Target | None, on_source: dict[str, Owned],
             on_destination: dict[str, Owned], by_id: dict[str, str], flows: FlowMap | None,
             flow_names: FlowNames | None) -> ClaimRequest | Rejected:
    if isinstance(row, Rejected):
        return replace(row, target=destination)
    assert destination is not None  # a row without one raised before
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

