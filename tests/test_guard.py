"""The incremental guard: same verdict whatever the chunking, violating text never released in
hold mode, clean text passed through exactly, linear cost, failing closed."""

from __future__ import annotations

import re
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamchat.core.errors import ConfigError
from streamchat.guardrails import (
    BlocklistPolicy,
    Guard,
    Match,
    PiiPolicy,
    SecretsPolicy,
    build_guard,
    check_input,
    policies,
)
from streamchat.guardrails.normalize import Normalizer, normalize
from streamchat.settings import guardrail_config

POLICIES = (PiiPolicy(), SecretsPolicy(), BlocklistPolicy(["darn", "hate"]))

VIOLATIONS = {
    "email": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "phone": "+1 415 555 0123",
    "openai_key": "sk-proj-Q7xLm2VbN9cR4tZ8wK1pJ6hD3fG5sA0eY2uI9oP4",
    "blocked_word": "darn",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----",
}

prose = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.", min_size=0, max_size=150).map(
    lambda s: " " + re.sub(r"\s+", " ", s).strip() + " "
)


def split(text: str, sizes: list[int]) -> list[str]:
    pieces, position, turn = [], 0, 0
    while position < len(text):
        size = max(1, sizes[turn % len(sizes)])
        pieces.append(text[position : position + size])
        position += size
        turn += 1
    return pieces


def run(text: str, sizes: list[int], **options):
    guard = Guard(POLICIES, **options)
    released: list[str] = []
    prefixes: list[str] = []
    violation = None
    for piece in split(text, sizes):
        step = guard.feed(piece)
        released.append(step.release)
        prefixes.append("".join(released))
        if step.stopped:
            violation = step.violation
            break
    else:
        step = guard.finish()
        released.append(step.release)
        prefixes.append("".join(released))
        violation = step.violation or violation
    return "".join(released), prefixes, violation, guard


@pytest.mark.parametrize("kind", sorted(VIOLATIONS))
@pytest.mark.parametrize("sizes", [[1], [3], [97], [10_000], [2, 5, 1, 8]])
def test_violation_split_across_chunks_is_found_at_the_same_place_and_never_released(kind, sizes):
    value = VIOLATIONS[kind]
    text = f"Here is some harmless text first, then {value} and more text after it ends here."
    released, prefixes, violation, _ = run(text, sizes)
    assert violation is not None and violation.kind == kind
    start = text.index(value)
    assert violation.start == start
    assert released == text[:start]
    for prefix in prefixes:
        assert value[:4] not in prefix[len("Here is some harmless text first, then ") - 1 :]


@settings(max_examples=150, deadline=None)
@given(
    before=prose,
    after=prose,
    kind=st.sampled_from(sorted(VIOLATIONS)),
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
)
def test_any_split_gives_the_same_verdict_and_no_part_of_the_match_is_released(
    before, after, kind, sizes
):
    value = VIOLATIONS[kind]
    text = before + value + after
    released, prefixes, violation, _ = run(text, sizes)
    whole_released, _, whole_violation, _ = run(text, [len(text)])
    assert violation is not None and whole_violation is not None
    assert (violation.kind, violation.start) == (whole_violation.kind, whole_violation.start)
    assert released == whole_released
    start = violation.start
    for prefix in prefixes:
        assert len(prefix) <= start, "nothing at or after the match start is ever released"


@settings(max_examples=150, deadline=None)
@given(text=prose, sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_without_a_violation_released_text_equals_the_input_exactly(text, sizes):
    released, _, violation, guard = run(text, sizes)
    assert violation is None
    assert released == text
    assert guard.record.check_errors == 0, "the final whole-text check agrees with the stream"


@pytest.mark.parametrize("sizes", [[1], [3], [97]])
def test_redact_replaces_each_match_with_a_label_and_continues(sizes):
    text = "Mail jane.doe@example.com or call +1 415 555 0123, then stop saying darn. The end."
    released, _, violation, guard = run(text, sizes, action="redact")
    assert violation is None
    assert released == (
        "Mail [email removed] or call [phone number removed], then stop saying "
        "[blocked word removed]. The end."
    )
    assert guard.record.redactions == 3
    assert guard.shown_text == released


def test_zero_width_characters_do_not_hide_an_email():
    text = "write to jane\u200b.doe@exa\u200dmple.com today, thanks for reading this."
    released, _, violation, _ = run(text, [2])
    assert violation is not None and violation.kind == "email"
    assert released == "write to "


def test_fullwidth_and_leetspeak_are_caught():
    fullwidth = "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"
    _, _, violation, _ = run(f"contact {fullwidth} now please, thanks a lot.", [1])
    assert violation is not None and violation.kind == "email"
    _, _, violation, _ = run("I h4t3 waiting for answers, it is true.", [1])
    assert violation is not None and violation.kind == "blocked_word"


@pytest.mark.parametrize(
    "text",
    [
        "This class is about assistants and their classic passes.",
        "Version 1.2.3.4 was released on 2024-01-15 at 12:30:45.",
        "small version 2024-01-15 12 the piece",  # a date and a number: not a US phone number
        "Order number 1234567812345678 shipped.",  # Luhn-valid but issuer digit 1
        "Card 4111 1111 1111 1112 is not valid.",  # Luhn fails
        "ISBN 978-3-16-148410-0 and hash 9f86d081884c7d659a2feaa0c55ad015.",
        "The ratio was 12345 to 67890 over 3 years.",
        "password: example and api_key = ${OPENAI_API_KEY}",
        "Use stream=True and max_tokens=256 in the request.",
    ],
)
def test_ordinary_text_passes_untouched(text):
    released, _, violation, _ = run(text, [3])
    assert violation is None, violation
    assert released == text


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("SSN 536-22-1234 is on the form.", "ssn"),
        ("CNIC 42101-1234567-1 belongs to someone.", "cnic"),
        ("Aadhaar 2345 6789 0124 is in the demo.", "aadhaar"),
        ("PAN ABCPE1234F is on the card.", "pan"),
        ("call 0300 1234567 in Karachi today", "phone"),
        ("call +91 98765 43210 in Mumbai today", "phone"),
        ("AWS key AKIAIOSFODNN7EXAMPLE is the docs sample.", "aws_access_key"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB here", "github_token"),
        ("xoxb-123456789012-abcdefghijkl is a Slack token", "slack_token"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N here",
            "jwt",
        ),
        ("DB_PASSWORD=Zx9!kq2#Lm7v in the env file", "password"),
        ("IBAN DE89370400440532013000 for transfers", "iban"),
    ],
)
def test_each_policy_finds_its_kind(text, kind):
    _, _, violation, _ = run(text + " and some trailing words to end.", [4])
    assert violation is not None and violation.kind == kind


def test_buffered_mode_shows_text_at_once_and_retracts_to_the_safe_prefix():
    guard = Guard(POLICIES, mode="buffered", buffer_chars=50)
    text = "A harmless start. Then jane.doe@example.com appears here in the middle of it all."
    shown, retract = "", None
    for piece in split(text, [5]):
        step = guard.feed(piece)
        shown += step.release
        if step.stopped:
            retract = step.retract_to
            break
    else:
        step = guard.finish()
        retract = step.retract_to
    assert retract == text.index("jane")
    assert guard.shown_text == "A harmless start. Then "
    assert guard.action == "stop"


def test_redact_in_buffered_mode_falls_back_to_stop():
    config = guardrail_config({"GUARDRAIL_MODE": "buffered", "GUARDRAIL_ACTION": "redact"})
    assert config.action == "stop" and config.redact_fell_back


def test_a_throwing_policy_fails_closed():
    class Broken:
        name = "broken"
        max_match = 10

        def find(self, text: str) -> list[Match]:
            raise RuntimeError("bug")

    guard = Guard([Broken()])
    step = guard.feed("anything at all")
    assert step.stopped and step.violation is not None
    assert step.violation.kind == "check_error" and step.release == ""
    assert guard.record.check_errors == 1


def test_an_overlong_secret_is_redacted_whole_however_long():
    key = "sk-proj-" + "A1b2C3d4" * 30
    released, _, violation, guard = run(f"the key is {key} and more", [7], action="redact")
    assert violation is None
    assert released == "the key is [secret removed] and more"
    assert guard.record.check_errors == 0


def test_an_overlong_secret_stops_the_answer_in_stop_mode():
    key = "sk-proj-" + "A1b2C3d4" * 30
    released, _, violation, _ = run(f"the key is {key} and more", [7])
    assert violation is not None and violation.kind == "openai_key"
    assert released == "the key is "


def test_guard_cost_is_linear_in_the_stream():
    class Counting:
        name = "counting"
        max_match = 50

        def __init__(self) -> None:
            self.scanned = 0

        def find(self, text: str) -> list[Match]:
            self.scanned += len(text)
            return []

    for size in (1, 4, 50):
        policy = Counting()
        guard = Guard([policy])
        text = "x" * 20_000
        for piece in split(text, [size]):
            guard.feed(piece)
        guard.finish()
        # Each check scans the new text, the max_match characters that may hold a match in
        # progress and a fixed context of 64 before them; then one final whole check.
        checks = len(text) / size
        assert policy.scanned <= len(text) + checks * (50 + 64) + len(text) + 100


def test_hold_record_reports_delay_and_hold_size():
    ticks = iter(range(1000))
    guard = Guard(POLICIES, clock=lambda: float(next(ticks)))
    for piece in split("word " * 100, [5]):
        guard.feed(piece)
    guard.finish()
    assert 0 < guard.record.max_held_chars <= guard.max_match + 5
    assert guard.record.max_hold_s > 0


def test_input_check_names_the_kind_never_the_text():
    config = guardrail_config({})
    violations = check_input(config, "my card is 4111-1111-1111-1111, thanks")
    assert [v.kind for v in violations] == ["card"]
    message = violations[0].input_message()
    assert message == "Your message was not sent: it contains a credit card number."
    assert "4111" not in message


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GUARDRAILS": "pii,magic"}, "GUARDRAILS must be a comma-separated list of pii"),
        ({"GUARDRAIL_MODE": "later"}, "GUARDRAIL_MODE must be one of hold, buffered"),
        ({"GUARDRAIL_ACTION": "shout"}, "GUARDRAIL_ACTION must be one of stop, redact"),
        ({"GUARDRAIL_BUFFER_CHARS": "0"}, "GUARDRAIL_BUFFER_CHARS"),
        ({"GUARDRAILS": "regex"}, "GUARDRAIL_REGEX_FILE must name a file"),
        ({"GUARDRAILS_LOCKED": "maybe"}, "GUARDRAILS_LOCKED must be true or false"),
    ],
)
def test_bad_guardrail_settings_are_explained(env, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        guardrail_config(env)


def test_off_disables_every_policy_and_text_passes_at_once():
    config = guardrail_config({"GUARDRAILS": "off"})
    guard = build_guard(config)
    assert guard.feed("jane.doe@example.com").release == "jane.doe@example.com"


def test_user_regex_file_with_named_patterns_and_a_bad_line(tmp_path):
    good = tmp_path / "patterns.txt"
    good.write_text("# max_match: 20\norder_id = ORD-\\d{6}\n")
    config = guardrail_config({"GUARDRAILS": "regex", "GUARDRAIL_REGEX_FILE": str(good)})
    guard = build_guard(config)
    step = guard.feed("your order ORD-123456 has shipped, more text follows to end this.")
    step = step if step.stopped else guard.finish()
    assert step.violation is not None and step.violation.kind == "order_id"
    bad = tmp_path / "bad.txt"
    bad.write_text("ok\n(unclosed\n")
    config = guardrail_config({"GUARDRAILS": "regex", "GUARDRAIL_REGEX_FILE": str(bad)})
    with pytest.raises(ValueError, match="line 2"):
        build_guard(config)


def test_normalizer_maps_positions_back_to_the_original():
    normalizer = Normalizer()
    for piece in ["ａ\u200bb  ", "\n c"]:
        normalizer.feed(piece)
    assert normalizer.window(0) == "ab c"
    assert [normalizer.to_original(i) for i in range(4)] == [0, 2, 3, 7]


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="ab \n\t١२3\u200bé x", max_size=9), max_size=60),
    reads=st.lists(st.tuples(st.integers(0, 80), st.integers(-3, 90)), max_size=60),
)
def test_normalizer_windows_read_from_the_kept_tail_equal_the_whole_text(pieces, reads):
    # A small kept tail, so reads fall before it, across it and after it, and it is trimmed.
    with mock.patch("streamchat.guardrails.normalize._RECENT_KEEP", 8):
        normalizer = Normalizer()
        for count, (piece, (back, length)) in enumerate(
            zip(pieces, reads + [(0, -1)] * len(pieces), strict=False), start=1
        ):
            normalizer.feed(piece)
            whole = normalize("".join(pieces[:count]))
            start = max(0, len(whole) - back)
            end = None if length < 0 else start + length
            assert normalizer.window(start, end) == whole[start:end]
            assert normalizer.window(start) == whole[start:]


noisy = st.text(alphabet="abcdeXYZ 0123456789,.-+()@:=_", min_size=0, max_size=120)


@settings(max_examples=300, deadline=None)
@given(
    before=noisy,
    after=noisy,
    kind=st.sampled_from(sorted(VIOLATIONS)),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
)
def test_noisy_text_with_digits_and_capitals_never_leaks_any_violation(before, after, kind, sizes):
    # Text around the value may itself hold numbers, capitals and symbols (which keep more
    # text held back, or form violations of their own): whatever is found first, chunking
    # never changes the verdict and nothing from its start on is ever released.
    text = before + " " + VIOLATIONS[kind] + " " + after
    released, prefixes, violation, _ = run(text, sizes)
    whole_released, _, whole_violation, _ = run(text, [len(text)])
    assert violation is not None and whole_violation is not None
    assert (violation.kind, violation.start) == (whole_violation.kind, whole_violation.start)
    assert released == whole_released == text[: violation.start]
    assert all(len(prefix) <= violation.start for prefix in prefixes)


def test_ordinary_prose_is_released_after_a_word_not_after_a_hundred_characters():
    ticks = iter(range(10_000))
    # Pieces arriving a UI update apart: each is checked on arrival.
    guard = Guard(POLICIES, clock=lambda: next(ticks) * 0.05)
    released = ""
    for piece in split("Streaming shows the answer as it is written, word by word. ", [3]):
        released += guard.feed(piece).release
    assert len(released) >= len("Streaming shows the answer as it is written, word by ")


def test_pieces_arriving_faster_than_a_ui_update_are_checked_together():
    class Counting:
        name = "counting"
        max_match = 10

        def __init__(self) -> None:
            self.checks = 0

        def find(self, text: str) -> list[Match]:
            self.checks += 1
            return []

    policy = Counting()
    guard = Guard([policy], check_every_chars=32, check_every_s=0.04, clock=lambda: 1.0)
    released = ""
    for piece in split("x" * 3200, [1]):
        released += guard.feed(piece).release
    # Each piece is checked until the first text is out (no delay to the first token: a first
    # word no longer than a batch waits to be whole, a longer one goes out as it is checked);
    # then at most one check per 32 characters.
    first_out = guard.max_match + 32 + 1
    assert policy.checks <= first_out + 3200 / 32 + 1
    assert released, "text is released while it streams"
    assert guard.finish().release, "finish releases what is still held"


def test_the_first_text_is_released_at_the_first_check_that_allows_it():
    guard = Guard(POLICIES, check_every_chars=1000, check_every_s=10.0, clock=lambda: 1.0)
    released = ""
    for piece in split("Hello there, and welcome", [3]):
        released += guard.feed(piece).release
        if released:
            break
    assert released.strip() == "Hello", "after the first word, not after 1000 characters"


DEFAULT = (PiiPolicy(), SecretsPolicy(), BlocklistPolicy(["darn"]))


def run_default(text: str, sizes: list[int], action: str = "redact") -> tuple[str, Guard]:
    guard = Guard(DEFAULT, action=action)
    released = ""
    for piece in split(text, sizes):
        step = guard.feed(piece)
        released += step.release
        if step.stopped:
            return released, guard
    return released + guard.finish().release, guard


@pytest.mark.parametrize("sizes", [[1], [3], [97], [100_000]])
def test_aws_create_access_key_output_is_redacted_id_and_secret(sizes):
    text = (
        '{\n    "AccessKey": {\n        "UserName": "ci-deployer",\n'
        '        "AccessKeyId": "AKIA4HXQ2PLMN7RSTUVW",\n        "Status": "Active",\n'
        '        "SecretAccessKey": "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",\n'
        '        "CreateDate": "2024-12-04T10:00:00+00:00"\n    }\n}'
    )
    released, guard = run_default(text, sizes)
    assert [v.kind for v in guard.record.violations] == ["aws_access_key", "aws_secret_key"]
    assert "AKIA4" not in released and "k7Gh2" not in released and "zX1c" not in released
    assert released.count("[secret removed]") == 2
    assert released.endswith('"CreateDate": "2024-12-04T10:00:00+00:00"\n    }\n}')


@pytest.mark.parametrize("sizes", [[1], [7], [100_000]])
def test_a_long_value_after_a_secret_name_at_the_very_end_is_redacted_whole(sizes):
    value = "Zq8" + "xK4mP9vL2wR7" * 30
    released, guard = run_default(f"Use this token: {value}", sizes)
    assert released == "Use this token: [secret removed]"
    assert guard.record.check_errors == 0


def test_a_private_key_that_never_ends_stops_the_answer_in_redact_mode():
    body = "MIIEow" + "QwErTyUiOp1234567890" * 1500
    released, guard = run_default(f"Key:\n-----BEGIN PRIVATE KEY-----\n{body}", [1000])
    assert guard.stopped and guard.record.violations[-1].kind == "private_key"
    assert released == "Key:\n[secret removed]"


@pytest.mark.parametrize("sizes", [[1], [5], [100_000]])
def test_two_secrets_and_an_email_in_one_answer_are_each_replaced(sizes):
    text = (
        "Mail jane.doe@mail.corp.example.co.uk, then set "
        "GH_TOKEN=ghp_R2d2C3poB8bY0d4Lk1Hn7Qm5Wx9Zv3Ts6Up0Aq and "
        "SLACK=xoxb-2400000000000-2400000000001-Ab3dEf6hIj9lMn2pQr5tUv8x. Done."
    )
    released, _ = run_default(text, sizes)
    assert released == (
        "Mail [email removed], then set GH_TOKEN=[secret removed] and SLACK=[secret removed]. Done."
    )


@pytest.mark.parametrize("sizes", [[1], [4], [100_000]])
def test_a_number_at_the_end_is_judged_when_the_stream_ends(sizes):
    released, guard = run_default("Mera number 9876543210", sizes)
    assert released == "Mera number [phone number removed]"
    assert [v.kind for v in guard.record.violations] == ["phone"]


def test_devanagari_and_urdu_digits_count_as_digits():
    normalizer = Normalizer()
    normalizer.feed("२३४५ ۶۷۸۹")
    assert normalizer.window(0) == "2345 6789"


@pytest.mark.parametrize(
    "text",
    ["Mobile: +92 300 1234567. 0000 more", "Mobile: +92 300 1234567 0000 more"],
)
@pytest.mark.parametrize("sizes", [[1], [5], [100_000]])
def test_a_phone_number_followed_by_more_digits_is_still_caught(text, sizes):
    released, guard = run_default(text, sizes, action="stop")
    assert guard.stopped and guard.record.violations[-1].kind == "phone"
    assert released == "Mobile: "


PHRASES = BlocklistPolicy(["suar ki aulad", "darn"])


def test_the_blocklist_holds_only_text_that_can_still_become_an_entry():
    assert PHRASES.hold_from("the answer is w12 w13 ") == len("the answer is w12 w13 ")
    assert PHRASES.hold_from("woh suar ki au") == len("woh ")
    assert PHRASES.hold_from("woh 5u4r k") == len("woh "), "leetspeak folds as in find"
    assert PHRASES.hold_from("so da") == len("so "), "a single word in progress"
    assert PHRASES.hold_from("xdar") == len("xdar"), "not on a word boundary: never an entry"
    assert PHRASES.hold_from("woh suar kiya") == len("woh suar kiya")


@pytest.mark.parametrize("action", ["stop", "redact"])
def test_a_blocked_phrase_is_never_shown_in_part_at_any_split(action):
    text = "Woh toh suar ki aulad hai, aur baaki sab theek hai."
    before, after = text.split("suar ki aulad")
    cuts = [[text[:cut], text[cut:]] for cut in range(1, len(text))]
    for pieces in cuts + [split(text, [size]) for size in (1, 2, 3, 5, 7)]:
        guard = Guard([PHRASES], action=action)
        released = ""
        for piece in pieces:
            step = guard.feed(piece)
            released += step.release
            if step.stopped:
                break
        else:
            released += guard.finish().release
        assert guard.record.violations, pieces
        expected = before if action == "stop" else before + "[blocked word removed]" + after
        assert released == expected, pieces


def test_text_after_a_word_that_begins_no_entry_is_released_at_once():
    guard = Guard(DEFAULT, check_every_chars=1, check_every_s=0.0)
    released = ""
    for index in range(40):
        released += guard.feed(f"w{index} ").release
        # Only the digits of the newest word wait (a number may go on after a space).
        # (The first update is whole words.)
        expected = "".join(f"w{i} " for i in range(index)) + ("w" if index > 1 else "")
        assert released == expected, released[-20:]


def test_the_first_update_is_a_whole_word_not_a_piece_of_one():
    guard = Guard(DEFAULT, check_every_chars=1000, check_every_s=10.0, clock=lambda: 1.0)
    releases = [guard.feed(f"w{index} ").release for index in range(5)]
    first = next(release for release in releases if release)
    assert first == "w0 ", releases


# --- the cheap first questions give the answers of the full searches they stand for ----------

# Pieces the texts below are made of: every format's prefix, names, separators, quotes, digits,
# words of the default blocklist and leetspeak, in any order and case.
_PIECES = st.sampled_from(
    ["-----BEGIN", "sk-", "AIza", "AKIA", "ASIA", "ACCA", "A3T", "SKa", "ACf", "ghp_",
     "github_pat_", "glpat-", "hooks.slack", "xoxb", "xapp", "k_live_", "SG.", "eyJ", "://",
     "@", "Bearer ", "BeArEr ", "bearer", "api_key", "PASSWORD", "passwd", "pwd", "secret",
     "secret access key", "token", "Credentials", "key", "=", ":", ":=", "=>", " ", "  ", "'",
     '"', "`", "x", "abc", "h3ll0", "1", "123456789", "12345678901", "IFSC", "w12", "idiot",
     "stupid", "-", "_", ".", ","]
)  # fmt: skip
_TEXTS = st.lists(_PIECES, max_size=14).map("".join)
# The secrets' trigger as one search, as it was before it was split in two (the reference).
_ONE_TRIGGER = re.compile(
    r"-----BEGIN|sk-|AIza|A(?:KIA|SIA|BIA|CCA|3T)|gh[pousr]_|github_pat_|gl[a-z]{1,5}-|"
    r"hooks\.slack|xox|xapp|k_live_|SG\.|(?:SK|AC)[0-9a-f]|eyJ|://|@|"
    r"(?i:bearer |(?:pass(?:wd|word|phrase)?|pwd|secret|key|token|credentials?)[\"']?\s{0,2}[:=])"
)


@settings(max_examples=2000, deadline=None)
@given(text=_TEXTS, data=st.data())
def test_the_secrets_trigger_in_two_parts_answers_as_the_one_search(text, data):
    start = data.draw(st.integers(0, len(text)))
    assert policies._triggered(text, start) == (_ONE_TRIGGER.search(text, start) is not None)


@settings(max_examples=2000, deadline=None)
@given(text=_TEXTS)
def test_the_reversed_look_never_misses_an_assignment_still_being_written(text):
    if policies._PENDING_ASSIGNMENT.search(text) is not None:
        assert policies._PENDING_ASSIGNMENT_REVERSED.match(text[::-1]) is not None


@settings(max_examples=2000, deadline=None)
@given(text=_TEXTS)
def test_the_blocklist_holds_from_the_first_word_start_that_begins_an_entry(text):
    blocklist = BlocklistPolicy(policies.default_blocklist())
    first = max(0, len(text) - (blocklist.max_match - 1))
    folded = policies.fold(text[first:])
    expected = next(
        (
            first + offset
            for offset in range(len(folded))
            if folded[offset:] in blocklist._prefixes
            and (first + offset == 0 or not policies._is_word_char(text[first + offset - 1]))
        ),
        len(text),
    )
    assert blocklist.hold_from(text) == expected


@settings(max_examples=2000, deadline=None)
@given(text=st.text(alphabet="0123456789 .,-_aA١२", max_size=40), data=st.data())
def test_nine_digits_are_asked_for_wherever_an_account_number_could_be(text, data):
    text, start = normalize(text), data.draw(st.integers(0, 40))
    if policies._ACCOUNT.search(text, start) is not None:
        assert policies._NINE_DIGITS.search(text, start) is not None


# --- holds read from where the last one began --------------------------------------------------

_PHRASES = BlocklistPolicy(["bhosdi ke", "suar ki aulad", "ullu ka pattha", "darn"])
_PHRASE_TEXTS = st.lists(
    st.sampled_from(
        ["bhosdi", "ke", "suar", "ki", "aulad", "ullu", "ka", "pattha", "darn", "d4rn", "BHOS",
         "x", "kab", " ", " ", "(", ".", "-", "_", "@", "1", "w12", "\u212aa", "5uar", "é"]
    ),
    max_size=16,
).map("".join)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(text=_PHRASE_TEXTS, data=st.data())
def test_the_blocklist_holds_from_the_first_entry_start_at_or_after_since(text, data):
    since = data.draw(st.integers(0, len(text)))
    first = max(since, len(text) - (_PHRASES.max_match - 1))
    folded = policies.fold(text)
    expected = next(
        (
            start
            for start in range(first, len(text))
            if folded[start:] in _PHRASES._prefixes
            and (start == 0 or not policies._is_word_char(text[start - 1]))
        ),
        len(text),
    )
    assert _PHRASES.hold_from(text, since) == expected


class _WholeTail:
    """A policy whose hold is worked out over the whole tail every time, as before the guard
    told policies where the last hold began, and that has no quick question (the reference)."""

    quiet = None

    def __init__(self, policy: object) -> None:
        self._policy = policy

    def __getattr__(self, name: str) -> object:
        return getattr(self._policy, name)

    def hold_from(self, text: str, since: int = 0) -> int:
        return self._policy.hold_from(text)  # type: ignore[attr-defined]


_STREAM_PIECES = st.sampled_from(
    ["w12 ", "4111 ", "1111", " ", "  ", "\n", "+91 ", "98765 ", "43210", "123456789012",
     "A/c ", "IFSC ", "SBIN0005943", ", ", "jane", "@", "example.com", "upi@oksbi", "token",
     " = ", "sk-", "proj", "Q7xLm2VbN9cR4tZ8", "-----BEGIN ", "RSA ", "PRIVATE KEY-----",
     "secret access key", ": ", "bhosdi ke", "suar ki au", "lad", "darn", "the answer ",
     "CNIC ", "35202-1234567-1", "GB82 ", "WEST ", "1234 5698 7654 32", "x", "."]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(_STREAM_PIECES, min_size=1, max_size=24),
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    gaps=st.lists(st.sampled_from([0.0, 0.01, 0.04, 0.1]), min_size=1, max_size=5),
    action=st.sampled_from(["stop", "redact"]),
)
def test_holds_read_from_the_last_hold_release_what_holds_over_the_whole_tail_would(
    pieces, sizes, gaps, action
):
    text = "".join(pieces)
    chosen = (PiiPolicy(), SecretsPolicy(), _PHRASES)
    outcomes = []
    for checked in (chosen, tuple(_WholeTail(p) for p in chosen)):
        now = [0.0]
        guard = Guard(checked, action=action, clock=lambda now=now: now[0])  # type: ignore[arg-type]
        steps = []
        for turn, piece in enumerate(split(text, sizes)):
            now[0] += gaps[turn % len(gaps)]
            step = guard.feed(piece)
            steps.append((step.release, step.violation, step.stopped))
        step = guard.finish()
        steps.append((step.release, step.violation, step.stopped))
        outcomes.append((steps, guard.shown_text, guard.record.check_errors))
    assert outcomes[0] == outcomes[1]


# The checks that run at every batch have fast forms; each must answer as its reference does.


@given(st.text(alphabet=st.sampled_from("aZ09 -@xX|l$+7!\t\u0967\u00e9\u0130"), max_size=40))
def test_fold_answers_as_lowering_then_leetspeak(text: str) -> None:
    assert policies.fold(text) == "".join(
        c.lower() if len(c.lower()) == 1 else c for c in text
    ).translate(policies._LEET)


@pytest.mark.parametrize(
    ("fast", "reference"),
    [
        (policies._worth_a_look, policies._WORTH_A_LOOK),
        (policies._has_nine_digits, policies._NINE_DIGITS),
    ],
    ids=["an @ or four digits close together", "nine digits"],
)
@given(
    text=st.text(alphabet=st.sampled_from("0123456789 -@a\u0663."), max_size=30),
    start=st.integers(min_value=0, max_value=30),
)
def test_the_digit_questions_answer_as_their_regexes(fast, reference, text, start) -> None:
    assert fast(text, start) is (reference.search(text, start) is not None)


@given(st.text(alphabet=st.sampled_from("pasword kyetnscrdbPK _"), max_size=30))
def test_the_secret_name_question_answers_as_a_search_for_each_name_part(text: str) -> None:
    lowered = text.lower()
    expected = any(part in lowered for part in policies._NAME_PARTS)
    assert policies._names_a_secret(lowered) is expected
    for part in policies._NAME_PARTS:
        assert policies._names_a_secret(f"my {part}!"), part


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.text(alphabet="ab \n\t١२3\u200bﬁé x", max_size=9), max_size=30))
def test_the_index_map_gives_each_normalised_character_its_original(pieces):
    """Against the map made character by character: each normalised character comes from the
    original character it was made of."""
    normalizer = Normalizer()
    for piece in pieces:
        normalizer.feed(piece)
    text, expected, in_space = "".join(pieces), [], False
    for index, char in enumerate(text):
        if char in "\u200b" or (char.isspace() and in_space):
            continue
        in_space = char.isspace()
        expected += [index] * len(normalize(char) or " ")
    assert [normalizer.to_original(i) for i in range(len(normalizer))] == expected
    assert normalizer.to_original(len(normalizer)) == len(text)


def test_plain_text_adds_nothing_to_the_index_map():
    normalizer = Normalizer()
    for _ in range(1000):
        normalizer.feed("w12 w13 ")
    normalizer.feed("a\u200bb")
    assert len(normalizer._run_starts) == 2, "one run for the plain text, one after the drop"


# A policy's quick question (Quiet) stands in for its find and hold_from at most checks: where
# it finds nothing, both must answer as it says.

_QUIET_PIECES = st.sampled_from(
    ["w12 ", "w7", "4111 ", "1111", "12 34", " ", "+91 ", "98765", "123456789", "SBIN0005943",
     "jane", "@", "example.com", "upi@oksbi", "token", "KEY", "Pass", " = ", ": ", "sk-",
     "Q7xLm2VbN9cR4tZ8", "-----BEGIN ", "PRIVATE KEY-----", "secret", "bearer ", "darn", "d4rn",
     "the ", "x", ".", "A", "B", "w", "1", "5", "|", "$hit", "GB82 ", "35202", "(0) ", "ullu ka",
     "mother", "fu", "class ", "Cr", "@ybl"]
)  # fmt: skip
_QUIET_POLICIES = (
    PiiPolicy(),
    SecretsPolicy(),
    BlocklistPolicy(policies.default_blocklist()),
    _PHRASES,
    BlocklistPolicy([]),
)


@settings(max_examples=2000, deadline=None)
@given(
    pieces=st.lists(_QUIET_PIECES, max_size=14),
    policy=st.sampled_from(_QUIET_POLICIES),
    data=st.data(),
)
def test_where_a_policys_quick_question_finds_nothing_it_answers_as_find_and_hold_from(
    pieces, policy, data
) -> None:
    text = "".join(pieces)
    since = data.draw(st.integers(0, len(text)))
    quiet = policy.quiet
    ask_from = max(0, min(since - quiet.reach, len(text) - quiet.tail))
    if quiet.pattern.search(text, ask_from) is not None:
        return  # the policy is asked in full
    assert policy.find(text, since) == []
    held = len(text) - quiet.hold.match(text[::-1]).end()
    assert max(since, held) == max(since, policy.hold_from(text, since))


class _Untouchable:
    """A policy's quick question only: asking the policy itself fails the test."""

    accepts_since = True

    def __init__(self, policy: object) -> None:
        self.name, self.max_match, self.quiet = policy.name, policy.max_match, policy.quiet  # type: ignore[attr-defined]

    def find(self, text: str, since: int = 0) -> list[object]:
        raise AssertionError(f"{self.name}.find asked of {text[since:]!r}")

    def hold_from(self, text: str, since: int = 0) -> int:
        raise AssertionError(f"{self.name}.hold_from asked of {text[since:]!r}")


_PROSE = "Streaming shows each word as it comes, so the wait feels short. "


@pytest.mark.parametrize(
    "pieces",
    [
        [f"w{i} w{i + 1} " for i in range(0, 60, 2)],  # benchmarks/load.py's answer
        [word + " " for word in _PROSE.split()],
    ],
    ids=["numbered words", "prose"],
)
def test_a_check_of_quiet_text_asks_the_default_policies_only_their_quick_questions(
    pieces,
) -> None:
    now = [0.0]
    quick = [_Untouchable(p) for p in (PiiPolicy(), SecretsPolicy())]
    guard = Guard(quick, clock=lambda: now[0])  # type: ignore[arg-type]
    shown = []
    for piece in pieces:
        now[0] += 0.04
        shown.append(guard.feed(piece).release)
    assert "".join(shown) == "".join(pieces)[: len("".join(shown))]
    assert len("".join(shown)) >= len("".join(pieces)) - 12  # only the last word or number held
