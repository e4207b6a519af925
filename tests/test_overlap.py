"""Resume seam: the repeated start of a continuation is removed, whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamchat.core.overlap import OverlapRemover, overlap_length


def run(shown: str, continuation: str, sizes: list[int]) -> str:
    remover = OverlapRemover(shown)
    out, position, turn = [], 0, 0
    while position < len(continuation):
        size = max(1, sizes[turn % len(sizes)]) if sizes else len(continuation)
        out.append(remover.feed(continuation[position : position + size]))
        position += size
        turn += 1
    out.append(remover.finish())
    return "".join(out)


def test_repeated_last_words_are_dropped():
    shown = "Streaming sends the answer in small pieces called"
    continuation = " pieces called tokens, one after another."
    assert run(shown, continuation, [3]) == " tokens, one after another."


def test_no_overlap_passes_through_unchanged():
    assert run("The end of part one.", " Part two begins here.", [1]) == " Part two begins here."


def test_tiny_accidental_overlap_is_kept():
    # "s." at the end and start: too short to be a deliberate repeat.
    assert overlap_length("It ends with tokens.", "s. More") == 0


def test_continuation_shorter_than_the_overlap_window_is_decided_at_finish():
    assert run("one two three", "two three", [2]) == ""
    assert run("one two three", " four", [2]) == " four"


words = st.lists(
    st.text(alphabet="abcdefghij", min_size=1, max_size=6), min_size=1, max_size=30
).map(" ".join)


@given(
    intended=words,
    data=st.data(),
)
def test_any_prefix_and_continuation_with_a_shared_seam_gives_the_intended_text(intended, data):
    # The answer was cut at `cut`; the model repeats the last `repeat` characters (if at
    # least the minimum) and continues. Output must equal the intended text exactly.
    cut = data.draw(st.integers(min_value=1, max_value=len(intended)))
    shown, rest = intended[:cut], intended[cut:]
    repeat = data.draw(st.integers(min_value=0, max_value=min(cut, 40)))
    repeated = shown[len(shown) - repeat :] if repeat >= 4 else ""
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=5))
    continuation = repeated + rest
    result = run(shown, continuation, sizes)
    if overlap_length(shown, continuation) == len(repeated):
        # The seam is unambiguous: the user sees exactly the intended answer.
        assert shown + result == intended
    else:
        # The new text itself goes on repeating what was shown (e.g. "ab ab ab"), so a longer
        # repeat is cut; what is visible still ends with the intended remainder, once.
        assert (shown + result).endswith(rest)
        assert len(shown + result) <= len(intended)


@given(st.text(min_size=0, max_size=300), st.text(min_size=0, max_size=300))
def test_chunking_never_changes_the_result(shown, continuation):
    whole = run(shown, continuation, [])
    for size in (1, 3, 97):
        assert run(shown, continuation, [size]) == whole


ANSWER = "Streaming sends the answer in pieces as the model writes it, so the reader "


@pytest.mark.parametrize("sizes", [[1], [3], [97], [len(ANSWER) * 2]])
def test_a_continuation_that_starts_the_whole_answer_again_shows_only_what_is_new(sizes):
    # Asked to continue, the model replays the answer from its first word, then goes on.
    assert run(ANSWER, ANSWER + "sees it grow.", sizes) == "sees it grow."


def test_a_replay_of_the_start_that_stops_short_adds_nothing():
    assert run(ANSWER, ANSWER[:30], [5]) == ""


def test_new_text_that_only_begins_like_the_answer_is_kept():
    assert run(ANSWER, "Streaming is also cheaper. ", [4]) == "Streaming is also cheaper. "


def test_a_short_answer_is_never_taken_for_a_replay():
    # "Yes" then "Yes, and more": too short to tell a replay from new words.
    assert run("Yes", "Yes, and more.", [2]) == "Yes, and more."
