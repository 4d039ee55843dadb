"""PII and secret masking on real data samples: consistency, valid JSON, secrets gone, originals untouched."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from downsize.curate.pii import PiiScrubber
from downsize.curate.recognizers import SPACY_MODEL, phone_ok
from downsize.errors import ConfigError

PII_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pii" / "presidio-generated-large.json"


@pytest.fixture(scope="module")
def surrogate() -> Iterator[PiiScrubber]:
    """One loaded analyzer for the module; loading must never try `spacy download`."""
    import spacy.cli

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"spacy download was called: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spacy.cli, "download", no_download)
        scrubber = PiiScrubber(mode="surrogate")
        _ = scrubber.analyzer
    yield scrubber


@pytest.fixture(scope="module")
def placeholder(surrogate: PiiScrubber) -> PiiScrubber:
    scrubber = PiiScrubber(mode="placeholder")
    scrubber.share_analyzer(surrogate)
    return scrubber


def tool_result(content: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "name": "get_user_details",
        "content": json.dumps(content),
    }


def tool_call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, separators=(",", ":"))},
            }
        ],
    }


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}


USER = {
    "name": {"first_name": "Mia", "last_name": "Li"},
    "address": {"address1": "975 Sunset Drive", "address2": "Suite 217", "city": "Austin", "zip": "78750"},
    "email": "mia.li3818@example.com",
    "dob": "1990-04-05",
    "payment_methods": {
        "credit_card_4421486": {"source": "credit_card", "last_four": "7447", "id": "credit_card_4421486"}
    },
}


def conversation() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Two calls of one conversation: the agent looks the user up, then books with the card it found."""
    first = [
        {"role": "system", "content": "You are an airline agent."},
        {"role": "user", "content": "Hi, my user id is mia_li_3668. Please book JFK to SEA."},
    ]
    call = tool_call("get_user_details", {"user_id": "mia_li_3668"})
    second = [
        *first,
        call,
        tool_result(USER),
        {"role": "assistant", "content": "Thank you, Mia. Shall I use your card ending in 7447?"},
        {"role": "user", "content": "Yes. Email the receipt to mia.li3818@example.com please."},
    ]
    booking = tool_call(
        "book_reservation",
        {
            "user_id": "mia_li_3668",
            "origin": "JFK",
            "passengers": [{"first_name": "Mia", "last_name": "Li", "dob": "1990-04-05"}],
            "payment_id": "credit_card_4421486",
            "note": 'say "hi" to Mia',
        },
        call_id="call_2",
    )
    return [
        ({"model": "m", "messages": first}, completion(call)),
        ({"model": "m", "messages": second}, completion(booking)),
    ]


ORIGINALS = [
    "Mia",
    "mia_li_3668",
    "mia.li3818@example.com",
    "1990-04-05",
    "credit_card_4421486",
    "975 Sunset Drive",
]


def test_the_packaged_spacy_model_is_loaded(surrogate: PiiScrubber) -> None:
    import spacy.util

    assert spacy.util.is_package(SPACY_MODEL)
    nlp = surrogate.analyzer.nlp_engine.nlp["en"]  # type: ignore[attr-defined]
    assert nlp.meta["name"].startswith("core_web_sm")
    assert {"PERSON", "EMAIL_ADDRESS", "API_KEY", "PAYMENT_ID"} <= set(
        surrogate.analyzer.get_supported_entities("en")
    )


@pytest.mark.parametrize("mode", ["surrogate", "placeholder"])
def test_planted_secrets_are_removed(mode: str, surrogate: PiiScrubber, placeholder: PiiScrubber) -> None:
    scrubber = surrogate if mode == "surrogate" else placeholder
    secrets = {
        "sk-proj-Ab3dEf9hIjKlMnOpQrStUvWxYz0123456789abcd": "API_KEY",
        "sk-4f9Kx2LmPq8RsTuVwXyZ0123456789AbCdEfGhIjKl": "API_KEY",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U": "BEARER_TOKEN",
        "AKIAQYLPMN5HHHFPZAM2": "CLOUD_KEY",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345": "API_KEY",
        "hunter2secret": "PASSWORD",
    }
    text = (
        "export OPENAI_API_KEY=sk-proj-Ab3dEf9hIjKlMnOpQrStUvWxYz0123456789abcd and the old key "
        "sk-4f9Kx2LmPq8RsTuVwXyZ0123456789AbCdEfGhIjKl. curl -H 'Authorization: Bearer "
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U' "
        "AWS_ACCESS_KEY_ID=AKIAQYLPMN5HHHFPZAM2 token ghp_0123456789abcdefghijABCDEFGHIJ012345 "
        "and my password is hunter2secret."
    )
    masked = scrubber.conversation("c").mask_text(text)
    for secret, entity in secrets.items():
        assert secret not in masked
        assert f"<{entity}_" in masked  # secrets become placeholders in both modes
    assert masked.endswith(".")  # the sentence's full stop is not part of the password
    args = scrubber.conversation("d").mask_text(
        json.dumps({"api_key": "q8Zr2LmX0pWvT5nK", "units": "metric"})
    )
    assert json.loads(args) == {"api_key": "<API_KEY_1>", "units": "metric"}


def test_bearer_tokens_in_tool_call_arguments(surrogate: PiiScrubber) -> None:
    request = {"messages": [{"role": "user", "content": "fetch it"}]}
    response = completion(
        tool_call(
            "http_get",
            {
                "url": "https://api.acme.io/v1/me",
                "headers": {"Authorization": "Bearer abcDEF0123456789xyzXYZ"},
            },
        )
    )
    masked, _ = surrogate.mask_conversation("t", [(request, response)])
    args = json.loads(masked[0][1]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert args["url"] == "https://api.acme.io/v1/me"
    assert "abcDEF0123456789xyzXYZ" not in args["headers"]["Authorization"]


def test_surrogates_are_consistent_within_a_conversation(surrogate: PiiScrubber) -> None:
    exchanges = conversation()
    before = copy.deepcopy(exchanges)
    masked, values = surrogate.mask_conversation("session-1", exchanges)
    assert exchanges == before  # originals untouched
    (req1, resp1), (req2, resp2) = masked
    text = json.dumps(masked)
    for original in ORIGINALS:
        assert original not in text
    user = json.loads(req2["messages"][3]["content"])
    first, last = user["name"]["first_name"], user["name"]["last_name"]
    assert first != "Mia" and last != "Li"
    # the same name everywhere: in the assistant's reply, in the booking arguments, in the email and user id
    assert f"Thank you, {first}." in req2["messages"][4]["content"]
    booking = json.loads(resp2["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert booking["passengers"][0] == {"first_name": first, "last_name": last, "dob": user["dob"]}
    assert user["email"] in req2["messages"][5]["content"]
    assert user["email"].startswith(f"{first.lower()}.{last.lower()}")
    # the user id is the same in the user's words, the lookup call, and the booking of the next exchange
    lookup = json.loads(resp1["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert lookup["user_id"] in req1["messages"][1]["content"]
    assert booking["user_id"] == lookup["user_id"] and lookup["user_id"].startswith(f"{first.lower()}_")
    # the payment id: a dict key of the tool result, its "id" value, and the booking argument
    (card_key,) = user["payment_methods"]
    assert card_key.startswith("credit_card_") and user["payment_methods"][card_key]["id"] == card_key
    assert booking["payment_id"] == card_key
    assert user["payment_methods"][card_key]["last_four"] in req2["messages"][4]["content"]
    assert values["PERSON"] == 2 and values["EMAIL_ADDRESS"] == 1 and values["USER_ID"] == 1
    assert booking["origin"] == "JFK"  # task content stays: airports are not people


def test_surrogates_differ_across_conversations(surrogate: PiiScrubber) -> None:
    a, _ = surrogate.mask_conversation("session-a", conversation())
    b, _ = surrogate.mask_conversation("session-b", conversation())
    again, _ = surrogate.mask_conversation("session-a", conversation())
    email = lambda masked: json.loads(masked[1][0]["messages"][3]["content"])["email"]  # noqa: E731
    assert email(a) != email(b)
    assert a == again  # reproducible: seeded by conversation and value


def test_tool_call_arguments_and_results_stay_valid_json(placeholder: PiiScrubber) -> None:
    masked, _ = placeholder.mask_conversation("p", conversation())
    for request, response in masked:
        for message in [*request["messages"], response["choices"][0]["message"]]:
            for call in message.get("tool_calls") or []:
                json.loads(call["function"]["arguments"])
            if message["role"] == "tool":
                json.loads(message["content"])
    booking = json.loads(masked[1][1]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert booking["passengers"][0]["first_name"] == "<PERSON_1>"
    assert booking["passengers"][0]["last_name"] == "<PERSON_2>"
    assert booking["note"] == 'say "hi" to <PERSON_1>'  # quotes inside a value survive re-serialisation
    assert booking["payment_id"].startswith("<PAYMENT_ID_")


def test_user_patterns_allow_list_and_bad_regex(surrogate: PiiScrubber) -> None:
    scrubber = PiiScrubber(
        mode="placeholder",
        patterns=[{"entity": "EMPLOYEE_ID", "regex": r"\bEMP-\d{6}\b", "score": 0.9}],
        allow=["Acme Support"],
    )
    masked = scrubber.conversation("x").mask_text("Ticket for EMP-123456 from Acme Support, cc EMP-123456.")
    assert masked == "Ticket for <EMPLOYEE_ID_1> from Acme Support, cc <EMPLOYEE_ID_1>."
    with pytest.raises(ConfigError, match="bad regex"):
        _ = PiiScrubber(patterns=[{"entity": "X", "regex": "("}]).analyzer


def test_phone_numbers_are_not_dates_or_ip_addresses() -> None:
    assert phone_ok("(978)645-9740x11144") and phone_ok("041 541 67 61") and phone_ok("20-32-85-26")
    assert not phone_ok("2007-03-23 18") and not phone_ok("86.231.85.193") and not phone_ok("196-20-7761")


def test_a_real_tau_conversation_leaves_no_user_value(surrogate: PiiScrubber, tau_path: Path) -> None:
    record = json.loads((tau_path / "trajectories-gpt-4o.json").read_text())[0]
    traj = record["traj"]
    exchanges = [
        ({"messages": traj[:i]}, completion(m)) for i, m in enumerate(traj) if m["role"] == "assistant"
    ]
    masked, _ = surrogate.mask_conversation("0#0", exchanges)
    user_id = "mia_li_3668"
    user = json.loads((tau_path / "users.json").read_text())[user_id]
    values = [user_id, user["email"], user["dob"], user["address"]["address1"], *user["payment_methods"]]
    values += [user["name"]["first_name"], user["name"]["last_name"]]
    text = json.dumps(masked)
    for value in values:
        assert f'"{value}"' not in text and f"{value}." not in text, value
    assert [m["role"] for m in masked[-1][0]["messages"]] == [m["role"] for m in exchanges[-1][0]["messages"]]


def test_presidio_sample_emails_cards_and_phones_are_found(surrogate: PiiScrubber) -> None:
    records = json.loads(PII_DATA.read_text())[:400]
    found = total = 0
    for record in records:
        spans = surrogate.analyze([record["full_text"]])[0]
        for gold in record["spans"]:
            if gold["entity_type"] not in ("EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER"):
                continue
            total += 1
            found += any(
                s.entity == gold["entity_type"]
                and s.start < gold["end_position"]
                and s.end > gold["start_position"]
                for s in spans
            )
    assert total > 40 and found / total >= 0.95
