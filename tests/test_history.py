"""The history sent upstream: what the user said and saw, with the current system prompt."""

from hypothesis import given
from hypothesis import strategies as st

from streamchat.chat import retried_question
from streamchat.core.history import Conversation, estimate_tokens, fit_to_budget, message_tokens
from streamchat.core.types import ChatMessage, EndReason


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


def exchange(n: int, size: int = 400) -> list[ChatMessage]:
    return [
        ChatMessage("user", f"q{n} " + "x" * size),
        ChatMessage("assistant", f"a{n} " + "y" * size),
    ]


def test_history_within_budget_is_sent_whole():
    messages = [ChatMessage("system", "sys"), *exchange(1), ChatMessage("user", "now")]
    fitted = fit_to_budget(messages, 10_000)
    assert fitted.messages == tuple(messages) and fitted.dropped == 0
    assert fit_to_budget(messages, None).dropped == 0


def test_oldest_exchanges_are_left_out_whole_and_the_system_prompt_and_question_stay():
    messages = [ChatMessage("system", "sys"), *exchange(1), *exchange(2), *exchange(3)]
    messages.append(ChatMessage("user", "the question"))
    # Room for about two exchanges of ~100 tokens per message.
    fitted = fit_to_budget(messages, 450)
    assert fitted.dropped == 2
    assert [m.content.split()[0] for m in fitted.messages] == ["sys", "q2", "a2", "q3", "a3", "the"]
    assert sum(message_tokens(m) for m in fitted.messages) <= 450


def test_the_current_exchange_is_kept_even_when_it_alone_is_over_budget():
    big = ChatMessage("user", "z" * 10_000)
    messages = [ChatMessage("system", "sys"), *exchange(1), big]
    fitted = fit_to_budget(messages, 100)
    assert fitted.messages == (messages[0], big) and fitted.dropped == 2
    # A continuation keeps the interrupted answer with its question.
    partial = ChatMessage("assistant", "partial answer")
    fitted = fit_to_budget([*exchange(1), *exchange(2), big, partial], 100)
    assert fitted.messages == (big, partial) and fitted.dropped == 4


def test_token_estimate_counts_utf8_bytes():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("नमस्ते") == 5  # 18 bytes of UTF-8


roles = st.sampled_from(["user", "assistant"])
histories = st.lists(st.tuples(roles, st.text(max_size=300)), max_size=30)


@given(histories, st.integers(min_value=1, max_value=3_000), st.booleans())
def test_fitting_keeps_a_suffix_that_starts_with_a_question(turns, budget, with_system):
    messages = [ChatMessage(role, text) for role, text in turns]
    if with_system:
        messages.insert(0, ChatMessage("system", "be brief"))
    fitted = fit_to_budget(messages, budget)
    head = messages[:1] if with_system else []
    kept = list(fitted.messages[len(head) :])
    assert list(fitted.messages[: len(head)]) == head
    body = messages[len(head) :]
    assert kept == body[fitted.dropped :], "a suffix of the history, in order"
    if fitted.dropped:
        assert not kept or kept[0].role == "user"
        over = sum(message_tokens(m) for m in fitted.messages) > budget
        # Over budget only when nothing but the current exchange is left.
        assert not over or all(m.role != "user" for m in kept[1:])


def test_the_last_question_is_the_last_user_turn_whatever_came_after():
    conversation = Conversation()
    assert conversation.last_question() is None
    conversation.add_user("first")
    conversation.add_assistant("an answer", EndReason.COMPLETE)
    conversation.add_user("second")
    conversation.add_assistant("", EndReason.ERROR)
    assert conversation.last_question() == "second"


def test_a_retry_button_carries_a_question_only_when_it_has_a_real_one():
    assert retried_question({"question": "What is a token?"}) == "What is a token?"
    for payload in ({}, {"question": "  "}, {"question": 42}, None, "What is a token?"):
        assert retried_question(payload) is None
