"""Every kind recognised from WAHA's bodies (tests/fixtures/waha/), and the shapes of WAHA's
other engines (GOWS field names, WEBJS `_data.type`)."""

from __future__ import annotations

import copy

import pytest

from engine.media.kinds import NO_URL, NOT_DOWNLOADED, WAHA_ERROR, Contact, Location, describe
from tests.support.waha import load_fixture

VCARD_NAME = "Maria Souza"


@pytest.mark.parametrize(
    ("fixture", "kind", "caption", "mimetype", "filename"),
    [
        ("message-media-image.json", "image", "Hi there's!", "image/jpeg", None),
        ("message-media-voice.json", "voice", "", "audio/ogg; codecs=opus", None),
        ("message-media-audio.json", "audio", "", "audio/mpeg", None),
        ("message-media-video.json", "video", "Olha como ficou", "video/mp4", None),
        (
            "message-media-document.json",
            "document",
            "Resultado do exame",
            "application/pdf",
            "exame-sangue.pdf",
        ),
        ("message-media-sticker.json", "sticker", "", "image/webp", None),
    ],
)
def test_media_kinds_from_their_bodies(fixture, kind, caption, mimetype, filename) -> None:
    payload = load_fixture(fixture)["payload"]
    ref = describe(payload)
    assert ref is not None
    assert (ref.kind, ref.caption) == (kind, caption)
    assert (ref.mimetype, ref.filename) == (mimetype, filename)
    assert ref.downloaded and ref.reason is None
    assert ref.url == payload["media"]["url"]
    assert ref.location is None and ref.contact is None


def test_location_from_its_body() -> None:
    ref = describe(load_fixture("message-media-location.json")["payload"])
    assert ref is not None and ref.kind == "location"
    assert ref.location == Location(-23.5613496, -46.6563297, "Clínica Paulista")
    assert not ref.downloaded and ref.url is None


def test_location_from_the_raw_message_alone_and_as_strings() -> None:
    payload = load_fixture("message-media-location.json")["payload"]
    only_raw = dict(payload, location=None)
    ref = describe(only_raw)
    assert ref is not None and ref.location == Location(
        -23.5613496, -46.6563297, "Clínica Paulista"
    )
    # Some engines send the coordinates as strings.
    as_strings = dict(payload, location={"latitude": "-6.40181474", "longitude": "106.8457"})
    ref = describe(as_strings)
    assert ref is not None and ref.location == Location(-6.40181474, 106.8457, "")


def test_contact_from_its_body() -> None:
    payload = load_fixture("message-media-contact.json")["payload"]
    ref = describe(payload)
    assert ref is not None and ref.kind == "contact"
    assert ref.contact == Contact(VCARD_NAME, payload["vCards"][0])
    # Without WAHA's vCards, from the raw contactMessage.
    ref = describe(dict(payload, vCards=[]))
    assert ref is not None and ref.contact is not None and ref.contact.name == VCARD_NAME


def test_text_is_not_media() -> None:
    assert describe(load_fixture("message-text.json")["payload"]) is None


def test_has_media_without_media_is_not_downloaded() -> None:
    payload = copy.deepcopy(load_fixture("message-media-voice.json")["payload"])
    payload["media"] = None
    ref = describe(payload)
    assert ref is not None
    assert (ref.kind, ref.downloaded, ref.reason, ref.url) == ("voice", False, NOT_DOWNLOADED, None)


def test_waha_error_and_missing_url() -> None:
    payload = copy.deepcopy(load_fixture("message-media-document.json")["payload"])
    payload["media"]["error"] = {"name": "Error", "message": "media not found"}
    ref = describe(payload)
    assert ref is not None and (ref.downloaded, ref.reason) == (False, WAHA_ERROR)
    payload["media"] = {"url": None, "mimetype": "application/pdf", "filename": None, "error": None}
    ref = describe(payload)
    assert ref is not None and (ref.downloaded, ref.reason) == (False, NO_URL)


def test_webjs_voice_note_and_location() -> None:
    # whatsapp-web.js names the kind in _data.type; its location's body is a thumbnail.
    voice = {
        "id": "false_5511987650001@c.us_3EB0AA",
        "body": "",
        "hasMedia": True,
        "media": {"url": "http://localhost:3000/api/files/default/x.oga", "mimetype": "audio/ogg"},
        "_data": {"type": "ptt", "mimetype": "audio/ogg; codecs=opus"},
    }
    ref = describe(voice)
    assert ref is not None and ref.kind == "voice"
    location = {
        "body": "/9j/4AAQSkZJRgABAQ",
        "hasMedia": False,
        "_data": {"type": "location", "lat": -22.9, "lng": -43.2, "loc": "Copacabana\nRio"},
    }
    ref = describe(location)
    assert ref is not None and ref.location == Location(-22.9, -43.2, "Copacabana")
    assert ref.caption == ""


def test_unknown_media_falls_back_to_its_mimetype() -> None:
    payload = {"hasMedia": True, "body": "", "media": {"url": "u", "mimetype": "video/3gpp"}}
    ref = describe(payload)
    assert ref is not None and ref.kind == "video"
    payload["media"]["mimetype"] = "application/zip"
    ref = describe(payload)
    assert ref is not None and ref.kind == "document"
