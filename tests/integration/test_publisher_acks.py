"""``Publisher.send`` trusts a PUBACK only for what it says: mosquitto acknowledges with "Not
authorized" and drops a message its ACL refuses, so the operator must hear "refused", not
"published"."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.link import TlsFiles
from province.errors import ProvinceError
from province.publish import Publisher, route
from tests.harness.broker import MosquittoBroker
from tests.harness.trust import command_body, envelope

pytestmark = pytest.mark.integration


def test_a_publish_the_acl_refuses_is_an_error_not_a_success(mqtt_broker: MosquittoBroker) -> None:
    cert, key = mqtt_broker.client_credentials("province-25.not-in-the-acl")
    tls = TlsFiles(mqtt_broker.ca_path, cert, key)
    url = f"mqtts://{mqtt_broker.host}:{mqtt_broker.port}"
    outgoing = route(
        envelope("command", command_body(expires="2036-01-01T00:00:00+07:00"), "command"),
        datetime.now(UTC),
    )
    with (
        Publisher(url, tls, "province-25.not-in-the-acl") as publisher,
        pytest.raises(ProvinceError, match=r"refused .*Not authorized"),
    ):
        publisher.send(outgoing)
    # The same message from the operator the ACL names goes through.
    cert, key = mqtt_broker.client_credentials("province-25")
    with Publisher(url, TlsFiles(mqtt_broker.ca_path, cert, key), "province-25") as publisher:
        publisher.send(outgoing)
