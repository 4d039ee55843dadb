from __future__ import annotations

from downsize.prompting import PromptBudget, parse_target, prune_messages, render_target
from downsize.types import ToolCall


def test_target_round_trip_is_compact() -> None:
    call = ToolCall("get_user_details", {"user_id": "mia_li_3668"})
    text = render_target(call)
    assert text == 'get_user_details {"user_id":"mia_li_3668"}'
    assert parse_target(text) == call
    assert parse_target("get_user_details") is None
    assert parse_target('x ["not", "an", "object"]') is None


def _messages() -> list[dict]:
    return [
        {"role": "system", "content": "POLICY " * 500},
        {"role": "user", "content": "first message that is old"},
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "get_user_details", "arguments": '{"user_id":"u1"}'}}],
        },
        {"role": "tool", "name": "get_user_details", "content": "word " * 300 + "END"},
        {"role": "user", "content": "please cancel reservation ABC123"},
    ]


class WordCodec:
    """Whitespace tokenizer with a real decode, so pruning can be checked exactly."""

    def __init__(self) -> None:
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in text.split(" "):
            self.words.append(w)
            ids.append(len(self.words) - 1)
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


def test_pruning_drops_system_keeps_newest_and_cuts_long_turns() -> None:
    codec = WordCodec()
    text = prune_messages(
        _messages(), codec.encode, codec.decode, PromptBudget(max_prompt_tokens=40, max_message_tokens=30)
    )
    assert "POLICY" not in text
    assert text.endswith("user: please cancel reservation ABC123")
    tool_line = next(line for line in text.split("\n") if line.startswith("tool get_user_details"))
    assert " … " in tool_line and tool_line.endswith("END")  # head and tail kept
    assert "first message that is old" not in text  # budget spent on newer turns
    assert "assistant called" not in text
    assert len(text.split()) <= 40 + 4


def test_pruning_renders_tool_calls() -> None:
    codec = WordCodec()
    text = prune_messages(_messages()[:3], codec.encode, codec.decode, PromptBudget(200, 100))
    assert 'assistant called: get_user_details {"user_id":"u1"}' in text


def test_conversation_signals_mark_new_identifiers_and_the_last_speaker() -> None:
    from downsize.prompting import SIGNALS, conversation_signals, gate_input

    messages = [
        {"role": "system", "content": "policy"},
        {"role": "user", "content": "my user id is mia_li_3668"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"function": {"name": "get_user_details", "arguments": '{"user_id": "mia_li_3668"}'}}
            ],
        },
        {"role": "tool", "name": "get_user_details", "content": "{...}"},
        {"role": "assistant", "content": "Which reservation?"},
        {"role": "user", "content": "ZFA04Y please, I am mia_li_3668"},
    ]
    signals = conversation_signals(messages)
    assert signals[0] == "LAST_user"
    assert "PREV_TEXT" in signals and "CALLED_get_user_details" in signals
    assert "NEW_ID_UPPER_ALNUM" in signals  # the reservation id was never looked up
    assert "SEEN_ID_SNAKE" in signals and "NEW_ID_SNAKE" not in signals  # the user id was
    assert conversation_signals(messages[:4])[0] == "LAST_tool_get_user_details"
    text, sep, tail = gate_input(messages).partition(SIGNALS)
    assert sep and "LAST user: ZFA04Y" in text and tail.split() == signals
