"""The history sent upstream: what the user said and saw, with the current system prompt."""

from streamchat.history import Conversation
from streamchat.types import EndReason


def roles_and_text(messages):
    return [(m.role, m.content) for m in messages]


def test_turns_are_sent_in_order_after_the_system_prompt():
    chat = Conversation()
    chat.add_user("hi")
    chat.add_assistant("hello!", EndReason.COMPLETE)
    chat.add_user("what is a token?")
    assert roles_and_text(chat.messages("Be kind.")) == [
        ("system", "Be kind."),
        ("user", "hi"),
        ("assistant", "hello!"),
        ("user", "what is a token?"),
    ]


def test_changing_the_system_prompt_applies_to_the_next_request():
    chat = Conversation()
    chat.add_user("hi")
    assert chat.messages("A")[0].content == "A"
    assert chat.messages("B")[0].content == "B"


def test_empty_system_prompt_is_left_out():
    chat = Conversation()
    chat.add_user("hi")
    assert roles_and_text(chat.messages("  ")) == [("user", "hi")]


def test_a_stopped_partial_answer_stays_in_history_and_is_marked():
    chat = Conversation()
    chat.add_user("explain streaming")
    chat.add_assistant("Streaming sends", EndReason.STOPPED_BY_USER)
    assert chat.turns[-1].interrupted
    assert ("assistant", "Streaming sends") in roles_and_text(chat.messages("s"))


def test_a_question_that_failed_before_any_text_is_not_sent_twice():
    chat = Conversation()
    chat.add_user("first try")
    chat.add_assistant("", EndReason.ERROR)
    chat.add_user("first try")
    assert roles_and_text(chat.messages("")) == [("user", "first try")]
