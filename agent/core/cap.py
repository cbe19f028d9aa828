"""CAP 1.2 in an emergency command (PROTOCOL.md section 6): read it safely, decide what it means.

This module owns the reading of a command's ``cap`` (structured fields) or ``cap_xml`` (a CAP 1.2
document as a string) and the one decision that follows: sound the alert, stay silent, or cancel
earlier alerts, and until when. It is pure (no I/O, no clock): the caller passes the verified
command body and its expiry and carries the decision out. Malformed CAP raises ``CapError``; the
station then rejects the whole command with the reason code ``schema``.

Decisions (PROTOCOL.md is silent on these):

- **One spelling.** A command carrying both ``cap`` and ``cap_xml`` is refused: two accounts of
  one alert that may disagree, and no rule says which wins (the strict.py principle: one document,
  one reading).
- **Status gates first, then msgType.** ``Actual`` is acted on. ``Test`` and ``Exercise`` are
  acted on only when the station is configured to (``sound_tests``); otherwise silent. ``System``
  (messages for the alerting network itself) and ``Draft`` (CAP: "not actionable in its original
  form") are never acted on, whatever the configuration. A message that is not acted on does
  nothing at all: a Test Cancel does not stop a real alert, and its ``cancels`` is empty.
- **msgType.** ``Alert`` sounds. ``Update`` is a correction: it sounds as a new alert and
  replaces (cancels) what it references; without references it simply sounds. ``Cancel`` gives
  the action ``cancel`` and must name something, else it is malformed. ``Ack`` and ``Error``
  answer a sender and carry nothing for the public: silent.
- **What references map to.** ``cancels`` lists, for Update and Cancel only, first the command's
  own ``references`` (a command id, the protocol's way to name what to stop), then the
  ``identifier`` of each CAP reference (CAP writes ``sender,identifier,sent`` triples separated by
  whitespace), without repeats. The caller stops every active alert whose command id or CAP
  identifier (``CapDecision.identifier`` of the command that started it) is listed. The CAP sender
  is not compared: only commands signed for this station by its own province or commune reach
  here, and CAP makes identifiers unique per sender, so within what one station hears an
  identifier names one alert. An Alert's command ``references`` is ignored (an Alert replaces
  nothing).
- **Expiry.** CAP can only shorten: ``expires = min(command expires, CAP expiry)``. The CAP expiry
  is the latest ``expires`` of the alert's ``info`` blocks (the alert is in force while any block
  is); if any block has none, CAP sets no bound (CAP: "each recipient is free to set its own
  policy", and ours is the command's expiry). The result may already be in the past; the caller
  judges it against its clock as it judges the command's own expiry.
- **Scope** (Public / Restricted / Private) is checked but gates nothing: the command's signed
  target already says which loudspeakers carry the alert.
- **Times** are RFC 3339 with an offset (``agent.core.timefmt``). CAP spells UTC ``-00:00``,
  which reads as UTC; ``Z`` (refused by CAP, allowed by the command schema) is accepted too.
- **Identifiers and senders** must be non-empty, at most 256 characters (the schema's bound) and
  free of whitespace, commas, ``<`` and ``&`` (CAP's rule; a comma or space would make references
  ambiguous).
- **Structured ``cap``** follows the command schema: the six required fields, optional
  ``references``; other keys are allowed by the schema and ignored, except these, read as in CAP:
  ``info`` (an object or a list of objects with optional ``expires``, ``headline``, ``event``,
  ``language``) or, as a shorthand for one such block, top-level ``expires`` / ``headline`` /
  ``event`` / ``language`` (not both forms at once).
- **``cap_xml``** must be a CAP 1.2 ``alert`` in the namespace
  ``urn:oasis:names:tc:emergency:cap:1.2`` with the six required header elements, each at most
  once, and every ``info`` holding CAP's required ``category``, ``event``, ``urgency``,
  ``severity`` and ``certainty``. Element text is read with surrounding whitespace removed
  (pretty-printed documents are common). Elements this module does not read, and elements of
  other namespaces (an XML signature, say), are ignored.
- **Headline** (for reports): the first ``info`` headline, else its ``event``, preferring a
  Vietnamese-language block; whitespace collapsed, at most 200 characters.

XML safety. ``xml.parsers.expat`` is driven directly rather than through ``xml.etree``: its
handlers refuse a DOCTYPE the moment the parser meets one, before any entity can be declared, so
billion laughs, quadratic blowup and external entities are impossible (no declaration, no entity:
an undeclared ``&name;`` is a well-formedness error), and the depth and element limits stop the
parse as it streams, before a tree is built. ``xml.etree``'s parser accepts DTDs and expands
internal entities (bounded only by the amplification limits of whichever libexpat the system
links), and its C parser hides the expat handlers; a textual pre-scan for ``<!DOCTYPE`` would be a
second parser that must agree with the first. Further limits: 64 KiB counted in UTF-8 bytes, an
encoding declaration (if any) must say UTF-8 (the document arrives as text inside JSON; any other
claim is false), depth 16, 4096 elements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn
from xml.parsers import expat

from agent.core.timefmt import parse_rfc3339

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
MAX_XML_BYTES = 64 * 1024
# CAP's deepest paths (alert/info/area/geocode/value) are 5 deep; an enveloped XML signature
# (alert/Signature/SignedInfo/Reference/Transforms/Transform/XPath) is 7. 16 leaves room.
MAX_DEPTH = 16
# Enough for hundreds of geocodes and polygons; far below the ~16000 that 64 KiB of "<a/>" holds.
MAX_ELEMENTS = 4096
HEADLINE_MAX = 200
IDENTIFIER_MAX = 256
REFERENCES_MAX = 2048

STATUSES = frozenset({"Actual", "Exercise", "System", "Test", "Draft"})
MSG_TYPES = frozenset({"Alert", "Update", "Cancel", "Ack", "Error"})
SCOPES = frozenset({"Public", "Restricted", "Private"})

_TOKEN = re.compile(r"[^\s,<&]+")
_HEADER = ("identifier", "sender", "sent", "status", "msgType", "scope")
_INFO_KEYS = ("expires", "headline", "event", "language")
_INFO_REQUIRED = ("category", "event", "urgency", "severity", "certainty")
# Elements of info this module reads or requires, each allowed once (category may repeat in CAP).
_INFO_SINGLE = frozenset({*_INFO_KEYS, "urgency", "severity", "certainty"})
# The expat name separator: a space can never be part of an XML name, so the local name after
# the last space is exact.
_SEP = " "


@dataclass(frozen=True, slots=True)
class CapDecision:
    """What the station does with one command's CAP."""

    action: str  # "sound" | "silent" | "cancel"
    reason: str | None  # why silent, or None
    expires: datetime  # the effective expiry: min(command expires, CAP expires)
    cancels: tuple[str, ...]  # command ids / CAP identifiers this alert cancels or replaces
    identifier: str | None
    status: str | None
    msg_type: str | None
    headline: str | None  # info/headline or event, for reports (truncated to 200 chars)


class CapError(ValueError):
    """Malformed CAP: the station rejects the command (reason code ``schema``)."""


@dataclass(frozen=True, slots=True)
class _Info:
    expires: datetime | None
    headline: str | None
    event: str | None
    language: str | None


@dataclass(frozen=True, slots=True)
class _Alert:
    identifier: str
    status: str
    msg_type: str
    references: tuple[str, ...]  # the identifiers of the CAP references
    infos: tuple[_Info, ...]


def decide(
    doc: Mapping[str, Any], command_expires: datetime, *, sound_tests: bool = False
) -> CapDecision:
    """doc is the verified command body (dict). No cap/cap_xml at all -> action "sound"."""
    if command_expires.tzinfo is None:
        # A caller's mistake, not the CAP's: comparing it with CAP times would raise TypeError.
        raise ValueError("command_expires must be timezone-aware")
    has_cap, has_xml = "cap" in doc, "cap_xml" in doc
    if not has_cap and not has_xml:
        return CapDecision("sound", None, command_expires, (), None, None, None, None)
    if has_cap and has_xml:
        raise CapError("a command carries cap or cap_xml, not both")
    alert = _from_fields(doc["cap"], "cap") if has_cap else _from_xml(doc["cap_xml"])
    return _decide(alert, doc, command_expires, sound_tests)


def _decide(
    alert: _Alert, doc: Mapping[str, Any], command_expires: datetime, sound_tests: bool
) -> CapDecision:
    cap_expires = _cap_expiry(alert.infos)
    expires = command_expires if cap_expires is None else min(command_expires, cap_expires)
    cancels: tuple[str, ...] = ()
    if alert.msg_type in ("Update", "Cancel"):
        cancels = _cancels(alert, doc)
        # Checked before the status gate: a Cancel naming nothing is malformed whatever its status.
        if alert.msg_type == "Cancel" and not cancels:
            raise CapError("a CAP Cancel names nothing to cancel (no references)")

    def decision(action: str, reason: str | None, cancelled: tuple[str, ...]) -> CapDecision:
        return CapDecision(
            action,
            reason,
            expires,
            cancelled,
            alert.identifier,
            alert.status,
            alert.msg_type,
            _headline(alert.infos),
        )

    if alert.status in ("System", "Draft"):
        return decision("silent", f"CAP status {alert.status} is never acted on", ())
    if alert.status in ("Test", "Exercise") and not sound_tests:
        return decision(
            "silent", f"CAP status {alert.status}: this station does not sound tests", ()
        )
    if alert.msg_type in ("Ack", "Error"):
        return decision("silent", f"CAP msgType {alert.msg_type} carries no alert", ())
    if alert.msg_type == "Cancel":
        return decision("cancel", None, cancels)
    return decision("sound", None, cancels)  # Alert, or Update (which replaces what it names)


def _cancels(alert: _Alert, doc: Mapping[str, Any]) -> tuple[str, ...]:
    named: list[str] = []
    if "references" in doc:
        command_ref = doc["references"]
        if not isinstance(command_ref, str) or not command_ref:
            raise CapError("the command's references must be a command id")
        named.append(command_ref)
    named.extend(alert.references)
    return tuple(dict.fromkeys(named))  # first occurrence wins, order kept


def _cap_expiry(infos: tuple[_Info, ...]) -> datetime | None:
    bounds = [info.expires for info in infos]
    if not bounds or any(bound is None for bound in bounds):
        return None
    return max(bound for bound in bounds if bound is not None)


def _headline(infos: tuple[_Info, ...]) -> str | None:
    # Reports are read in the province: a Vietnamese block, when there is one, says it best.
    ordered = sorted(infos, key=lambda info: not _is_vietnamese(info.language))
    for text in [i.headline for i in ordered] + [i.event for i in ordered]:
        if text is not None:
            collapsed = " ".join(text.split())
            if collapsed:
                return collapsed[:HEADLINE_MAX]
    return None


def _is_vietnamese(language: str | None) -> bool:
    return language is not None and (language.lower() == "vi" or language.lower()[:3] == "vi-")


# -- the common reading of both forms --------------------------------------------------------------
def _from_fields(value: object, where: str) -> _Alert:
    """Read the structured form (also what the XML is turned into) into an _Alert."""
    if not isinstance(value, Mapping):
        raise CapError(f"{where} must be an object")
    for key in _HEADER:
        if key not in value:
            raise CapError(f"{where} lacks {key}")
    identifier = _token(value["identifier"], f"{where} identifier")
    _token(value["sender"], f"{where} sender")
    _time(value["sent"], f"{where} sent")
    status = _enum(value["status"], STATUSES, f"{where} status")
    msg_type = _enum(value["msgType"], MSG_TYPES, f"{where} msgType")
    _enum(value["scope"], SCOPES, f"{where} scope")
    references = _references(value.get("references"), f"{where} references")
    shorthand = {key: value[key] for key in _INFO_KEYS if key in value}
    if "info" in value:
        if shorthand:
            raise CapError(f"{where}: info and top-level {sorted(shorthand)} together")
        raw = value["info"]
        blocks = [raw] if isinstance(raw, Mapping) else raw
        if not isinstance(blocks, list):
            raise CapError(f"{where} info must be an object or a list of objects")
        infos = tuple(_info(block, f"{where} info") for block in blocks)
    else:
        infos = (_info(shorthand, where),) if shorthand else ()
    return _Alert(identifier, status, msg_type, references, infos)


def _info(value: object, where: str) -> _Info:
    if not isinstance(value, Mapping):
        raise CapError(f"{where} must be an object")
    texts: dict[str, str | None] = {}
    for key in _INFO_KEYS:
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise CapError(f"{where} {key} must be a string")
        texts[key] = item
    raw_expires = texts["expires"]
    expires = None if raw_expires is None else _time(raw_expires, f"{where} expires")
    return _Info(expires, texts["headline"], texts["event"], texts["language"])


def _token(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise CapError(f"{what} must be a string")
    if len(value) > IDENTIFIER_MAX or not _TOKEN.fullmatch(value):
        raise CapError(
            f"{what} must be 1..{IDENTIFIER_MAX} characters without spaces, commas, < or &"
        )
    return value


def _time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise CapError(f"{what} must be a string")
    try:
        return parse_rfc3339(value)  # "-00:00", CAP's UTC, reads as a zero offset
    except ValueError as exc:
        # Truncated: the message becomes an event detail, and the text is the sender's.
        raise CapError(f"{what}: {exc!s:.120}") from exc


def _enum(value: object, allowed: frozenset[str], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise CapError(f"{what} must be one of {sorted(allowed)}, not {value!r:.40}")
    return value


def _references(value: object, what: str) -> tuple[str, ...]:
    """CAP references: whitespace-separated ``sender,identifier,sent``; returns the identifiers."""
    if value is None:
        return ()
    if not isinstance(value, str):
        raise CapError(f"{what} must be a string")
    if len(value) > REFERENCES_MAX:
        raise CapError(f"{what} longer than {REFERENCES_MAX} characters")
    identifiers = []
    for triple in value.split():
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            raise CapError(f"{what}: {triple!r:.80} is not sender,identifier,sent")
        identifiers.append(_token(parts[1], f"{what} identifier"))
    return tuple(identifiers)


# -- cap_xml ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Node:
    namespace: str
    name: str
    text: list[str] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)


class _Builder:
    """expat handlers that build a small tree within the limits, refusing what is not allowed."""

    def __init__(self) -> None:
        self.root: _Node | None = None
        self.stack: list[_Node] = []
        self.count = 0

    def start(self, name: str, _attributes: object) -> None:
        self.count += 1
        if self.count > MAX_ELEMENTS:
            raise CapError(f"cap_xml has more than {MAX_ELEMENTS} elements")
        if len(self.stack) >= MAX_DEPTH:
            raise CapError(f"cap_xml nests deeper than {MAX_DEPTH} elements")
        namespace, _, local = name.rpartition(_SEP)
        node = _Node(namespace, local)
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    def end(self, _name: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:
        if self.stack:  # expat reports no text outside the root element, but be sure
            self.stack[-1].text.append(text)

    def xml_decl(self, _version: str, encoding: str | None, _standalone: int) -> None:
        if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
            raise CapError(f"cap_xml declares encoding {encoding!r:.40}; it must be UTF-8")


def _refuse_dtd(*_: object) -> NoReturn:
    raise CapError("cap_xml must not contain a DOCTYPE (no DTDs, no entities)")


def _refuse_declaration(*_: object) -> NoReturn:
    # Unreachable once a DOCTYPE is refused (declarations live inside one); kept so that a change
    # to the DOCTYPE handling cannot silently let entities in.
    raise CapError("cap_xml must not declare entities or notations")


def _parse(data: bytes) -> _Node:
    # encoding="UTF-8" overrides whatever the document declares: the bytes are ours, from a str.
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=_SEP)
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    builder = _Builder()
    parser.buffer_text = True  # one data call per run of text, not one per line
    parser.XmlDeclHandler = builder.xml_decl
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_declaration
    parser.UnparsedEntityDeclHandler = _refuse_declaration
    parser.NotationDeclHandler = _refuse_declaration
    parser.ExternalEntityRefHandler = _refuse_declaration
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise CapError(f"cap_xml is not well-formed XML: {exc}") from exc
    if builder.root is None:  # cannot happen after a successful parse; keeps mypy honest
        raise CapError("cap_xml has no root element")
    return builder.root


def _from_xml(value: object) -> _Alert:
    if not isinstance(value, str):
        raise CapError("cap_xml must be a string")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, which JSON's \ud800 can smuggle in
        raise CapError("cap_xml is not valid Unicode text") from exc
    if len(data) > MAX_XML_BYTES:
        raise CapError(f"cap_xml is {len(data)} bytes, more than {MAX_XML_BYTES}")
    root = _parse(data)
    if (root.namespace, root.name) != (CAP_NS, "alert"):
        raise CapError(f"cap_xml root is not a CAP 1.2 alert ({CAP_NS})")
    fields: dict[str, Any] = {}
    infos: list[dict[str, str]] = []
    for child in root.children:
        if child.namespace != CAP_NS:
            continue
        if child.name == "info":
            infos.append(_xml_info(child))
        elif child.name in (*_HEADER, "references"):
            if child.name in fields:
                raise CapError(f"cap_xml has more than one {child.name}")
            fields[child.name] = _text(child)
    # A document without info is valid CAP: an empty list, so the shorthand rules never apply.
    fields["info"] = infos
    return _from_fields(fields, "cap_xml")


def _xml_info(node: _Node) -> dict[str, str]:
    found: dict[str, str] = {}
    seen: set[str] = set()
    for child in node.children:
        if child.namespace != CAP_NS:
            continue
        if child.name in _INFO_SINGLE:
            if child.name in found:
                raise CapError(f"cap_xml info has more than one {child.name}")
            found[child.name] = _text(child)
        seen.add(child.name)
    missing = [name for name in _INFO_REQUIRED if name not in seen]
    if missing:
        raise CapError(f"cap_xml info lacks {', '.join(missing)}")
    return {key: found[key] for key in _INFO_KEYS if key in found}


def _text(node: _Node) -> str:
    if node.children:
        raise CapError(f"cap_xml {node.name} must hold text only")
    return "".join(node.text).strip()
