"""Request validation derived from the installed botocore service model, for every operation served.

Nothing here names an operation or a member: the constraints come from botocore's Connect model
(``required``, ``min``/``max`` length, count or range, ``pattern``, ``enum``), and a route added to
the sandbox is validated the moment it is served. The model is loaded once per process.

Which error the sandbox answers, and why:

- A constraint violation answers the first of ``InvalidParameterException`` / ``InvalidRequestException``
  that the operation's model lists (both HTTP 400 in the model), else ``ValidationException`` 400.
  Connect's model has no ``ValidationException`` shape, and every phone-number operation lists
  ``InvalidParameterException``, which is what Connect answers for a bad parameter (e.g. a number
  that is not available); we have not captured real answers for each malformed input class, so this
  is the model's documented error, not an observation. The message follows the wording AWS front ends
  use for constraint violations ("1 validation error detected: Value ... at '...' failed to satisfy
  constraint: ...").
- A value of the wrong JSON type (a string where the model says integer) answers 400
  ``SerializationException``, as AWS's JSON front ends do when the body cannot be read into the shape.
- Patterns are Java regular expressions, searched (Smithy: not implicitly anchored). Two repairs: some
  Connect patterns are escaped twice in the model (``\\\\+[1-9]`` taken literally demands a backslash, so
  no real number would pass: the sandbox undoes the doubling), and ``\\p{L}``-style classes, which
  Python's ``re`` lacks, are expanded from ``unicodedata``. ``$`` is read as the end of the value: Java's
  ``$`` also matches before a final newline; the sandbox refuses that, a value ending in a newline is
  never what a client meant.
- Some members state their pattern only in the documentation ("Pattern: ^[a-f0-9]{8}-...$", e.g.
  ClientToken). Such a documented pattern is enforced too, as a whole-value match.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Mapping
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape

from bulkclaim.sandbox.state import ServiceError

__all__ = ["error_for", "http_route", "service_model", "validate"]

_DOCUMENTED_PATTERN = re.compile(r"Pattern:\s*(?:</?\w+>\s*)*(\^\S+\$)")
_PREFERRED_ERRORS = ("InvalidParameterException", "InvalidRequestException")
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "long": (int,), "boolean": (bool,), "float": (int, float),
    "double": (int, float), "list": (list,), "map": (dict,), "structure": (dict,),
    "timestamp": (int, float, str), "blob": (str,),
}


@functools.cache
def service_model(service: str = "connect") -> ServiceModel:
    """The installed botocore model of ``service``, loaded once."""
    return botocore.session.get_session().get_service_model(service)


def error_for(operation: OperationModel) -> tuple[str, int]:
    """The (code, HTTP status) this operation answers to a constraint violation (see the module doc)."""
    listed = {shape.name: shape for shape in operation.error_shapes}
    for name in _PREFERRED_ERRORS:
        if name in listed:
            return name, int(listed[name].metadata.get("error", {}).get("httpStatusCode", 400))
    return "ValidationException", 400


def http_route(operation_name: str, service: str = "connect") -> tuple[str, str]:
    """(HTTP method, aiohttp path) of an operation, from the model's ``http`` trait: URI labels keep
    the model's member names, so validation finds them; a greedy label ``{Key+}`` spans slashes. A
    label may be empty (``/contact-flows-summary/``), so the model's ``min`` length answers it, not a
    bare 404 from the router."""
    http = service_model(service).operation_model(operation_name).http
    path = re.sub(r"\{(\w+)\+\}", r"{\1:.+}", http["requestUri"].partition("?")[0])
    path = re.sub(r"\{(\w+)\}", r"{\1:[^/]*}", path)
    return http["method"], path


def validate(operation_name: str, body: Mapping[str, Any], uri: Mapping[str, str],
             query: Mapping[str, str], service: str = "connect") -> None:
    """Check one request against the model's input shape; raise :class:`ServiceError` on the first
    violation (AWS reports up to ten; one is enough for a client to be told why)."""
    operation = service_model(service).operation_model(operation_name)
    shape = operation.input_shape
    if shape is None:
        return
    problem = _check_structure(shape, _members_of(shape, body, uri, query), path="")
    if problem is None:
        return
    kind, message = problem
    if kind == "type":
        raise ServiceError("SerializationException", 400, message)
    code, status = error_for(operation)
    raise ServiceError(code, status, f"1 validation error detected: {message}")


def _members_of(shape: StructureShape, body: Mapping[str, Any], uri: Mapping[str, str],
                query: Mapping[str, str]) -> dict[str, Any]:
    """The request's value of each input member, read from where the model says it travels."""
    found: dict[str, Any] = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        source: Mapping[str, Any] = {"uri": uri, "querystring": query}.get(location, body) if location else body
        if wire_name in source:
            value = source[wire_name]
            if location == "querystring" and member.type_name in ("integer", "long"):
                value = _as_int(value)
            elif location == "querystring" and member.type_name == "list":  # repeated: ?a=x&a=y
                getall = getattr(source, "getall", None)
                value = list(getall(wire_name)) if getall is not None else [value]
            found[name] = value
    return found


def _as_int(text: Any) -> Any:
    try:
        return int(text)
    except (TypeError, ValueError):
        return text  # reported as a type error


_Problem = tuple[str, str]  # ("type" | "constraint", message)


def _constraint(value: Any, path: str, rule: str) -> _Problem:
    shown = value if isinstance(value, str | int) and not isinstance(value, bool) else "..."
    if isinstance(shown, str) and len(shown) > 64:
        shown = shown[:64] + "..."
    return "constraint", f"Value '{shown}' at '{path}' failed to satisfy constraint: {rule}"


def _check(shape: Shape, value: Any, path: str) -> _Problem | None:
    if _wrong_type(shape, value):
        return "type", f"Expected {shape.type_name} at '{path}', got {type(value).__name__}."
    if isinstance(shape, StructureShape):
        return _check_structure(shape, value, path)
    if isinstance(shape, ListShape):
        return _check_size(shape, value, path, "length") or next(
            (p for i, item in enumerate(value) if (p := _check(shape.member, item, f"{path}.{i + 1}.member"))),
            None)
    if isinstance(shape, MapShape):
        return _check_size(shape, value, path, "length") or _check_map(shape, value, path)
    if shape.type_name == "string":
        return _check_size(shape, value, path, "length") or _check_text(shape, value, path)
    if shape.type_name in ("integer", "long", "float", "double"):
        return _check_range(shape, value, path)
    return None


def _wrong_type(shape: Shape, value: Any) -> bool:
    expected = _JSON_TYPES.get(shape.type_name, (object,))
    return not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)


def _check_structure(shape: StructureShape, value: Mapping[str, Any], path: str) -> _Problem | None:
    for name in shape.required_members:
        if value.get(name) is None:
            return "constraint", f"Value null at '{_join(path, name)}' failed to satisfy constraint: " \
                                 "Member must not be null"
    for name, member in shape.members.items():
        if name in value and value[name] is not None:
            problem = _check(member, value[name], _join(path, name))
            if problem is not None:
                return problem
    return None


def _check_map(shape: MapShape, value: Mapping[Any, Any], path: str) -> _Problem | None:
    for key, item in value.items():
        problem = _check(shape.key, key, f"{path}.key") or _check(shape.value, item, f"{path}.{key}.member")
        if problem is not None:
            return problem
    return None


def _check_size(shape: Shape, value: Any, path: str, what: str) -> _Problem | None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and len(value) < low:
        return _constraint(value, path, f"Member must have {what} greater than or equal to {low}")
    if high is not None and len(value) > high:
        return _constraint(value, path, f"Member must have {what} less than or equal to {high}")
    return None


def _check_range(shape: Shape, value: float, path: str) -> _Problem | None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and value < low:
        return _constraint(value, path, f"Member must have value greater than or equal to {low}")
    if high is not None and value > high:
        return _constraint(value, path, f"Member must have value less than or equal to {high}")
    return None


def _check_text(shape: Shape, value: str, path: str) -> _Problem | None:
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        return _constraint(value, path, f"Member must satisfy enum value set: [{', '.join(enum)}]")
    pattern = shape.metadata.get("pattern")
    if pattern and not compiled_pattern(pattern).search(value):
        return _constraint(value, path, f"Member must satisfy regular expression pattern: {pattern}")
    documented = documented_pattern(shape)
    if documented and not compiled_pattern(documented).search(value):
        return _constraint(value, path, f"Member must satisfy regular expression pattern: {documented}")
    return None


def documented_pattern(shape: Shape) -> str | None:
    """A pattern the model states only in the member's documentation ("Pattern: ^...$")."""
    match = _DOCUMENTED_PATTERN.search(shape.documentation or "")
    return match.group(1) if match else None


def _join(path: str, name: str) -> str:
    member = name[:1].lower() + name[1:]  # AWS reports members in camel case: 'phoneNumber'
    return f"{path}.{member}" if path else member


# -- Java patterns in Python ------------------------------------------------------------------------
@functools.cache
def compiled_pattern(java: str) -> re.Pattern[str]:
    """A model pattern (Java syntax) as a Python regular expression (see the module doc)."""
    text = java.replace("\\\\", "\\")  # undo the model's double escaping
    out: list[str] = []
    in_class, i = False, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and text.startswith(("\\p{", "\\P{"), i):
            end = text.index("}", i)
            ranges = _category_ranges(text[i + 3:end])
            negate = text[i + 1] == "P"
            out.append(ranges if in_class and not negate else f"[{'^' if negate else ''}{ranges}]")
            i = end + 1
            continue
        if char == "\\":
            out.append(text[i:i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char == "$" and not in_class:
            char = r"\Z"
        out.append(char)
        i += 1
    return re.compile("".join(out))


def _category_ranges(category: str) -> str:
    """``\\p{L}`` (or ``\\p{Lu}``...) as a character-class body of code point ranges."""
    return "".join(re.escape(chr(low)) + (f"-{re.escape(chr(high))}" if high > low else "")
                   for name, low, high in _category_runs() if name.startswith(category))


@functools.cache
def _category_runs() -> tuple[tuple[str, int, int], ...]:
    """Every run of code points sharing a general category: one pass over Unicode (~0.2 s), once."""
    runs: list[tuple[str, int, int]] = []
    for code in range(sys.maxunicode + 1):
        name = unicodedata.category(chr(code))
        if runs and runs[-1][0] == name and runs[-1][2] == code - 1:
            runs[-1] = (name, runs[-1][1], code)
        else:
            runs.append((name, code, code))
    return tuple(runs)
