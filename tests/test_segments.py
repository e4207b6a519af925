"""Long answers in parts: where the Markdown may be cut (core/segments.py), how the Chainlit
sink goes on in a new message at such a cut (only for a page that acknowledges its paints, only
when the app allows it), that nothing is lost or reordered across parts whatever the chunking,
that retractions and the end reach back into earlier parts, and that a stored answer in parts
is one turn of the history."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamchat.core.coalesce import CoalescingSink
from streamchat.core.history import METADATA_KEY
from streamchat.core.paint import MessagePaint
from streamchat.core.relay import StreamResult
from streamchat.core.segments import SEGMENT_KEY, BlockBoundaries, StreamingAnswers
from streamchat.core.sinks import ChainlitSink
from streamchat.core.types import EndReason
from streamchat.hosting.persistence import conversation_from_steps
from tests.scripted import STATS
from tests.waiting import eventually

PART = 120  # a part's least length in these tests (the app's is STREAM_PART_CHARS)


def cuts_of(text: str, size: int | None = None) -> list[int]:
    """The safe cuts found in `text` fed in pieces of `size` (whole: None)."""
    scanner = BlockBoundaries()
    step = size or max(len(text), 1)
    return [cut for i in range(0, len(text), step) for cut in scanner.feed(text[i : i + step])]


def at(text: str, line: str) -> int:
    """The offset of `line`, which starts a line of `text` once."""
    offset = text.index("\n" + line) + 1
    assert text.count("\n" + line) == 1
    return offset


# --- where Markdown can be cut -------------------------------------------------------------


def test_a_cut_is_at_a_top_level_block_that_follows_a_blank_line():
    text = "# Title\n\nFirst paragraph,\nits second line.\n\nSecond paragraph.\n"
    assert cuts_of(text) == [at(text, "First"), at(text, "Second")]


def test_never_at_the_start_nor_without_a_blank_line_before():
    assert cuts_of("One\nTwo\nThree\n") == []
    assert cuts_of("\n\nOne\n") == [2]  # after a blank line, though not at offset 0
    assert cuts_of("One\n") == []


def test_a_line_is_judged_only_once_it_is_complete():
    scanner = BlockBoundaries()
    assert scanner.feed("Intro\n\nNext") == []  # "Next" may still become "Next\n===" or more
    assert scanner.feed(" words\n") == [7]


def test_never_inside_a_fenced_code_block():
    text = (
        "Before.\n\n```python\ndef f():\n\n    return 1\n\nx = 2\n```\n\nAfter.\n\n"
        "~~~~\nA ``` inside a tilde fence\n\nstill code\n~~~~\n\nEnd.\n"
    )
    assert cuts_of(text) == [
        at(text, "```python"),
        at(text, "After."),
        at(text, "~~~~\nA"),
        at(text, "End."),
    ]


def test_a_fence_closes_only_with_its_own_marker_at_least_as_long():
    text = "Intro\n\n````\n```\n\nin code\n````\n\nOut.\n"
    assert cuts_of(text) == [at(text, "````\n```"), at(text, "Out.")]


def test_never_inside_a_list_nor_between_its_items():
    text = (
        "Intro.\n\n- one\n\n- two\n\n  continued under two\n\n* three\n\n"
        "1. first\n\n2) second\n\n10. tenth\n\nAfter the lists.\n"
    )
    assert cuts_of(text) == [at(text, "After the lists.")]  # not even before the first item


def test_never_inside_a_table_nor_an_indented_code_block():
    text = (
        "Intro.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n"
        "    indented code\n\n    more of it\n\n\tand a tab\n\nAfter.\n"
    )
    assert cuts_of(text) == [at(text, "| a | b |"), at(text, "After.")]


MARKDOWN_LINES = st.sampled_from(
    [
        "",
        "",
        "Some words of a paragraph.",
        "# A heading",
        "- an item",
        "1. a numbered item",
        "  an indented line",
        "    code by indent",
        "```",
        "```python",
        "~~~",
        "| a | b |",
        "|---|---|",
        "> a quote",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(MARKDOWN_LINES, min_size=1, max_size=60),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=20),
)
def test_the_cuts_do_not_depend_on_how_the_text_is_chunked(lines, sizes):
    text = "\n".join(lines) + "\n"
    whole = cuts_of(text)
    scanner = BlockBoundaries()
    found, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= len(text):
            break
        found += scanner.feed(text[start : start + size])
        start += size
    assert found == whole
    # The same rules, written out for these few kinds of line.
    fence, offset, blank, safe = None, 0, False, []
    for line in lines:
        if fence is not None:
            fence = None if line == fence else fence
            blank = False
        elif not line:
            blank = True
        else:
            if blank and offset and line[0] not in " \t" and not line.startswith(("- ", "1. ")):
                safe.append(offset)
            fence = line[:3] if line.startswith(("```", "~~~")) else None
            blank = False
        offset += len(line) + 1
    assert whole == safe


# --- a page, as far as the sink can tell -----------------------------------------------------


class Page:
    """The chat as a Chainlit page shows it: messages by id, in the order they appeared, with
    the content each event leaves (stream_start, stream_token, new_message, update, delete)."""

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str]] = []  # (event, message id)

    def show(self, event: str, message: FakeMessage) -> None:
        self.events.append((event, message.id))
        self.shown[message.id] = message.content
        self.metadata[message.id] = json.loads(json.dumps(message.metadata or {}))

    def remove(self, message: FakeMessage) -> None:
        self.events.append(("delete", message.id))
        del self.shown[message.id]

    def texts(self) -> list[str]:
        return list(self.shown.values())


class FakeMessage:
    """A chainlit.Message as the sink uses it: its first text starts the stream (stream_start),
    send() and update() end it."""

    ids = itertools.count(1)

    def __init__(self, page: Page, *, id: str | None = None, content: str = "") -> None:
        self.page = page
        self.id = id or f"m{next(self.ids)}"
        self.content = content
        self.streaming = False
        self.actions: list[Any] = []
        self.metadata: dict[str, Any] | None = None

    async def stream_token(self, token: str, is_sequence: bool = False) -> None:
        if not token:
            return
        self.content = token if is_sequence else self.content + token
        event = "stream_token" if self.streaming else "stream_start"
        self.streaming = True
        self.page.show(event, self)

    async def send(self) -> object:
        self.streaming = False
        self.page.show("new_message", self)
        return self

    async def update(self) -> object:
        self.streaming = False
        self.page.show("update", self)
        return True

    async def remove(self) -> object:
        self.page.remove(self)
        return True


def split_message(message: FakeMessage) -> FakeMessage:
    """What app.py's `_split_message` does: the part so far under the id the page knows, the
    answer going on under a new id."""
    finished = FakeMessage(message.page, id=message.id, content=message.content)
    finished.metadata = dict(message.metadata or {})
    message.id = f"m{next(FakeMessage.ids)}"
    message.content = ""
    message.streaming = False
    return finished


class Answer:
    """A ChainlitSink on a fake page, with a paint tracker whose page has (or has not) said it
    paints, as public/paint_ack.js does."""

    def __init__(
        self,
        *,
        painting: bool = True,
        split: Any = split_message,
        show_metrics: bool = True,
        checkpoint: Any = None,
        every_s: float = 3600,
    ) -> None:
        self.page = Page()
        self.message = FakeMessage(self.page)
        self.paint = MessagePaint()
        if painting:
            self.paint.acknowledge(0)  # the page's script is there
        self.errors: list[str] = []

        async def notify(text: str, actions: list[Any]) -> None:
            self.errors.append(text)

        self.sink = ChainlitSink(
            self.message,
            notify_error=notify,
            make_action=lambda name, label: name,
            show_metrics=show_metrics,
            paint=self.paint,
            split=split,
            segment_chars=PART,
            checkpoint=checkpoint,
            checkpoint_every_s=every_s,
        )

    async def stream(self, text: str, size: int) -> None:
        for i in range(0, len(text), size):
            await self.sink.write(text[i : i + size])

    async def end(self, text: str, reason: EndReason = EndReason.COMPLETE) -> None:
        await self.sink.finish(StreamResult("s1", text, reason, STATS))

    def answer_shown(self) -> str:
        """The answer's text across its parts, without the last part's footer."""
        *parts, last = self.page.texts()
        return "".join(parts) + last.split("\n\n*")[0]


def long_answer(blocks: int = 12) -> str:
    """Markdown of every kind, several parts long."""
    block = (
        "## Section {n}\n\nA paragraph of words about streaming, part {n}.\n"
        "It goes on over a second line.\n\n"
        "```python\ndef f{n}():\n\n    return {n}\n```\n\n"
        "- item one\n\n- item two\n  still two\n\n"
        "| a | b |\n|---|---|\n| {n} | x |\n\n"
        "    indented code {n}\n\n"
    )
    return "".join(block.format(n=n) for n in range(blocks)) + "The end."


ANSWER = long_answer()


# --- the sink, in parts -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 97, len(ANSWER)])
async def test_concatenated_parts_are_the_whole_answer_at_any_chunking(size):
    answer = Answer()
    await answer.stream(ANSWER, size)
    await answer.end(ANSWER)
    texts = answer.page.texts()
    # One write is one message (its stream_start); after that, a part per cut past PART.
    assert len(texts) >= 3 if size < len(ANSWER) else len(texts) == 1
    assert answer.answer_shown() == ANSWER
    cuts = cuts_of(ANSWER)
    offset = 0
    for part in texts[:-1]:  # each ends at a safe cut, once it holds at least PART characters
        offset += len(part)
        assert offset in cuts and len(part) >= PART
    assert len(texts) == len(answer.sink.parts) + 1


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.integers(1, 10),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12),
)
async def test_nothing_is_lost_or_reordered_whatever_the_chunking(blocks, sizes):
    text = long_answer(blocks)
    answer = Answer()
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(text):
            break
        await answer.sink.write(text[start : start + size])
        assert answer.sink.shown == text[: start + size]
        start += size
    await answer.end(text)
    assert answer.answer_shown() == text


async def test_earlier_parts_carry_no_buttons_stats_or_stored_answer():
    answer = Answer()
    await answer.stream(ANSWER, 50)
    await answer.end(ANSWER, EndReason.ERROR)
    ids = list(answer.page.shown)
    first, last = ids[0], ids[-1]
    for index, message_id in enumerate(ids):
        segment = answer.page.metadata[message_id][SEGMENT_KEY]
        assert segment == {"first": first, "index": index, "continued": message_id != last}
    for part in answer.sink.parts:
        assert part.actions == [] and METADATA_KEY not in (part.metadata or {})
        assert "tok/s" not in part.content
    assert answer.message.actions == ["continue"]
    assert answer.page.shown[last].endswith("\n\n*" + STATS.summary() + "*")
    assert answer.page.metadata[last][METADATA_KEY]["text"] == ANSWER
    # Each earlier part was ended (new_message) before the next one started.
    starts = [mid for event, mid in answer.page.events if event == "stream_start"]
    assert starts == ids


async def test_no_cut_for_a_page_without_the_paint_script():
    for paint in (False, None):
        answer = Answer(painting=bool(paint))
        if paint is None:
            answer.sink.paint = None
        await answer.stream(ANSWER, 40)
        await answer.end(ANSWER)
        assert len(answer.page.texts()) == 1, "one message, as before"
        assert answer.answer_shown() == ANSWER
        assert answer.sink.parts == []


async def test_the_first_cut_waits_for_the_pages_first_acknowledgement():
    answer = Answer(painting=False)
    await answer.stream(ANSWER[: len(ANSWER) // 2], 40)
    assert len(answer.page.texts()) == 1
    answer.paint.acknowledge(0)  # the page's script speaks up
    await answer.stream(ANSWER[len(ANSWER) // 2 :], 40)
    assert len(answer.page.texts()) >= 2
    await answer.end(ANSWER)
    assert answer.answer_shown() == ANSWER


async def test_no_cut_when_the_app_says_the_answer_must_stay_whole():
    asked = []

    def refuse(message: FakeMessage) -> None:
        asked.append(message.id)
        return None

    answer = Answer(split=refuse)
    await answer.stream(ANSWER, 40)
    await answer.end(ANSWER)
    assert asked, "asked at each write past a cut"
    assert len(answer.page.texts()) == 1 and answer.answer_shown() == ANSWER


async def test_a_refused_cut_is_taken_later_once_allowed():
    allowed = False

    def sometimes(message: FakeMessage) -> FakeMessage | None:
        return split_message(message) if allowed else None

    answer = Answer(split=sometimes)
    await answer.stream(ANSWER[:400], 40)
    assert len(answer.page.texts()) == 1
    allowed = True
    await answer.stream(ANSWER[400:], 40)
    await answer.end(ANSWER)
    assert len(answer.page.texts()) >= 2 and answer.answer_shown() == ANSWER


async def test_a_retraction_reaches_back_into_earlier_parts():
    answer = Answer()
    await answer.stream(ANSWER, 30)
    parts_before = len(answer.sink.parts)
    assert parts_before >= 3
    # The guard takes back text as far as inside the first part.
    keep = ANSWER[: len(answer.sink.parts[0].content) - 10]
    await answer.sink.replace(keep)
    assert "".join(answer.page.texts()) == keep
    assert len(answer.sink.parts) == 1
    assert answer.sink.shown == keep
    # The answer goes on and ends: still whole and in order.
    rest = " and then some more.\n\nA new paragraph after it.\n"
    await answer.stream(rest, 7)
    await answer.end(keep + rest)
    assert answer.answer_shown() == keep + rest


async def test_a_retraction_to_a_parts_boundary_removes_the_later_parts():
    answer = Answer()
    await answer.stream(ANSWER, 30)
    first = answer.sink.parts[0].content
    await answer.sink.replace(first + "Safe text.")
    assert "".join(answer.page.texts()) == first + "Safe text."
    assert [p.content for p in answer.sink.parts] == [first, "Safe text."]
    await answer.end(first + "Safe text.", EndReason.GUARDRAIL)
    *parts, last = answer.page.texts()
    assert parts == [first, "Safe text."] and last.startswith("*")  # the end's footer


async def test_an_end_shorter_than_what_was_shown_cuts_the_parts_back():
    answer = Answer(show_metrics=False)
    await answer.stream(ANSWER, 30)
    end = ANSWER[: PART // 2]
    await answer.end(end, EndReason.GUARDRAIL)
    assert "".join(answer.page.texts()) == end
    assert [p.content for p in answer.sink.parts] == [end]


async def test_cuts_after_a_retraction_are_those_of_the_text_as_it_stands():
    answer = Answer()
    text = "Intro.\n\n```\ncode\n\nmore code\n\n" + "x" * PART + "\n\nstill code\n"
    await answer.stream(text, 11)
    await answer.sink.replace("Intro.\n\n" + "y" * PART + "\n\n")
    await answer.stream("After.\n\nEnd.\n", 3)
    await answer.end("Intro.\n\n" + "y" * PART + "\n\nAfter.\n\nEnd.\n")
    *parts, _last = answer.page.texts()
    assert parts == ["Intro.\n\n" + "y" * PART + "\n\n"]


async def test_saves_while_streaming_hold_the_whole_answer_across_parts():
    saved = asyncio.Event()
    texts: list[str] = []

    async def checkpoint(metadata: dict[str, Any]) -> None:
        texts.append(metadata[METADATA_KEY]["text"])
        if SEGMENT_KEY in metadata and len(texts[-1]) > 2 * PART:
            saved.set()

    answer = Answer(checkpoint=checkpoint, every_s=0.001)
    await answer.stream(ANSWER[: 4 * PART], 30)
    assert answer.sink.parts
    await asyncio.wait_for(saved.wait(), 10)
    await answer.end(ANSWER[: 4 * PART])
    assert any(ANSWER[: 4 * PART].startswith(t) and len(t) > 2 * PART for t in texts)


async def test_a_part_saved_while_it_went_on_in_a_new_message_is_stored_again_finished():
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_checkpoint(metadata: dict[str, Any]) -> None:
        entered.set()
        await release.wait()  # a database write under way while the answer goes on

    answer = Answer(checkpoint=slow_checkpoint)
    await answer.sink.write(ANSWER[:40])
    await entered.wait()
    first_id = answer.message.id
    await answer.stream(ANSWER[40 : 4 * PART], 40)
    assert answer.sink.parts and answer.sink.parts[0].id == first_id
    release.set()  # that save lands now, after the finished part was sent and stored
    await eventually(
        lambda: ("update", first_id) in answer.page.events,
        within=10,
        what="the finished part stored again",
    )
    assert answer.page.shown[first_id] == answer.sink.parts[0].content
    await answer.end(ANSWER[: 4 * PART])
    assert answer.answer_shown() == ANSWER[: 4 * PART]


async def test_through_the_coalescer_every_part_is_whole_and_in_order():
    answer = Answer()
    coalesced = CoalescingSink(answer.sink, interval_s=0.0)
    for i in range(0, len(ANSWER), 13):
        await coalesced.write(ANSWER[i : i + 13])
    await coalesced.finish(StreamResult("s1", ANSWER, EndReason.COMPLETE, STATS))
    assert len(answer.page.texts()) >= 3 and answer.answer_shown() == ANSWER


async def test_acknowledgements_of_a_later_part_count_after_the_earlier_parts():
    answer = Answer()
    for i in range(0, len(ANSWER), 40):  # up to the first cut
        await answer.sink.write(ANSWER[i : i + 40])
        if answer.sink.parts:
            break
    first_id, sent = answer.sink.parts[0].id, answer.paint.sent
    assert answer.message.id != first_id and answer.paint.painted < sent
    await answer.sink.write("more words")  # the new part's first update after its start
    assert answer.paint.sent == sent + 1
    answer.paint.acknowledge(1, answer.message.id)  # the page painted it
    assert answer.paint.painted == sent + 1
    answer.paint.acknowledge(sent, first_id)  # a late word about the first part: no step back
    assert answer.paint.painted == sent + 1


# --- one chat, one cut-up answer at a time ----------------------------------------------------


class Done:
    def __init__(self) -> None:
        self.done = False


def test_an_answer_is_alone_only_while_no_other_streams_beside_it():
    answers = StreamingAnswers()
    first, second = Done(), Done()
    answers.add(first)
    assert answers.alone(first)
    answers.add(second)
    assert not answers.alone(first) and not answers.alone(second)
    first.done = True
    assert answers.alone(second)


def test_a_finished_answer_is_not_kept_alive_by_the_chat():
    answers = StreamingAnswers()
    answers.add(Done())
    gc.collect()
    assert answers.alone(Done())


# --- a stored answer in parts is one turn -------------------------------------------------------


def test_a_stored_answer_in_parts_is_one_turn_of_the_history():
    first = "First part.\n\n"
    whole = first + "Second part."
    stored = {"text": whole, "reason": "complete", "stream_id": "s"}
    steps = [
        {"id": "q", "type": "user_message", "output": "Tell me a lot."},
        {
            "id": "p1",
            "type": "assistant_message",
            "output": first,
            "metadata": {SEGMENT_KEY: {"first": "p1", "index": 0, "continued": True}},
        },
        {
            "id": "p2",
            "type": "assistant_message",
            "output": "Second part.\n\n*stats*",
            "metadata": json.dumps(
                {
                    SEGMENT_KEY: {"first": "p1", "index": 1, "continued": False},
                    METADATA_KEY: stored,
                }
            ),
        },
        {"id": "q2", "type": "user_message", "output": "And?"},
        {
            "id": "a2",
            "type": "assistant_message",
            "output": "Short.",
            "metadata": {METADATA_KEY: {"text": "Short.", "reason": "complete"}},
        },
    ]
    turns = [(t.role, t.content) for t in conversation_from_steps(steps).turns]
    assert turns == [
        ("user", "Tell me a lot."),
        ("assistant", whole),
        ("user", "And?"),
        ("assistant", "Short."),
    ]


def test_an_earlier_part_still_holding_a_save_made_while_streaming_is_not_a_turn():
    # The first part was saved while it was the whole answer so far, then went on in p2.
    partial = {"text": "First part.\n\n", "reason": "error", "stream_id": "", "in_progress": 1.0}
    steps = [
        {"id": "q", "type": "user_message", "output": "Tell me a lot."},
        {"id": "p1", "type": "assistant_message", "output": "First part.\n\n",
         "metadata": {METADATA_KEY: partial}},
        {"id": "p2", "type": "assistant_message", "output": "Second part.",
         "metadata": {SEGMENT_KEY: {"first": "p1", "index": 1, "continued": False},
                      METADATA_KEY: {"text": "First part.\n\nSecond part.", "reason": "complete"}}},
    ]  # fmt: skip
    turns = [(t.role, t.content) for t in conversation_from_steps(steps).turns]
    assert turns == [("user", "Tell me a lot."), ("assistant", "First part.\n\nSecond part.")]
