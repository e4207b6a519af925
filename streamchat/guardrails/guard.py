"""The incremental Guard: checks a stream as it arrives and decides what may be shown.

Each check scans the new text plus the stretch where a match could still be in progress (at most
`max_match` back), so a violation split across any chunk boundary is found and a stream costs
O(length); checks run in batches of about one UI update. Modes: hold (text is released only once
nothing can be in progress in it) or buffered (shown at once, retracted on a violation). Actions:
stop, or redact (hold only) replacing each whole value with a label. See docs/guardrails.md."""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from streamchat.guardrails.normalize import Normalizer
from streamchat.guardrails.policies import Match, Policy, Quiet, describe, label

log = logging.getLogger("streamchat.guardrails")

_GROWTH_MARGIN = 1
# Text before a possible match that policies may look at (lookbehinds, an IFSC or the word
# "CNIC" shortly before a number).
_CONTEXT = 64
# A redacted value still going on after this many characters stops the stream.
_SWALLOW_LIMIT = 20_000
# How far back the search for a value's end marker starts again (a marker split across pieces).
_END_MARKER_REACH = 64
# A piece that comes this share of check_every_s after the last check is checked with it:
# pieces a little early for their batch (network jitter) would otherwise leave the batch to the
# timer, a task of its own that wakes just after the next piece.
_BATCH_SLACK = 0.75


@dataclass(frozen=True, slots=True)
class Violation:
    """Where and what, never the matched text. Positions are in the original stream text."""

    policy: str
    kind: str
    start: int
    end: int
    label: str

    def message(self) -> str:
        if self.kind == "check_error" and self.policy == "moderation":
            return "Stopped: the moderation check could not be completed, so the rest is withheld."
        return f"Stopped: the answer contained {describe(self.kind)}."

    def input_message(self) -> str:
        if self.kind == "check_error" and self.policy == "moderation":
            return (
                "Your message was not sent: the moderation check could not be completed. "
                "Try again in a moment."
            )
        return f"Your message was not sent: it contains {describe(self.kind)}."


# Not frozen: one is made at every check, and a frozen dataclass's __init__ costs three times
# as much (object.__setattr__ per field). Nothing changes a step once it is returned.
@dataclass(slots=True)
class GuardStep:
    release: str = ""  # text to append to what the user sees
    violation: Violation | None = None  # the violation that stopped the stream
    retract_to: int | None = None  # buffered mode: cut the shown text to this many characters
    stopped: bool = False


@dataclass
class GuardRecord:
    """What the guard did for one stream: for the metrics line and the logs."""

    policies: tuple[str, ...]
    violations: list[Violation] = field(default_factory=list)
    redactions: int = 0
    check_errors: int = 0
    failed_policies: list[str] = field(default_factory=list)  # local checks that raised
    released_before_stop: int | None = None
    max_held_chars: int = 0
    max_hold_s: float = 0.0


@dataclass(slots=True)
class _Swallow:
    """A redacted value that goes on past what was matched: everything up to `end` (searched
    from `search_from`) is part of it and is never shown."""

    policy: str
    kind: str
    start: int  # normalised position where the value began
    search_from: int
    end: re.Pattern[str]


class Guard:
    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        mode: str = "hold",
        action: str = "stop",
        buffer_chars: int = 200,
        check_every_chars: int = 32,
        check_every_s: float = 0.04,
        stream_id: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in ("hold", "buffered"):
            raise ValueError(f"unknown guardrail mode {mode!r}")
        if action not in ("stop", "redact"):
            raise ValueError(f"unknown guardrail action {action!r}")
        self.policies = tuple(policies)
        self.mode = mode
        # Text that has been shown cannot be un-shown: redaction needs hold mode.
        self.action = action if mode == "hold" else "stop"
        self.buffer_chars = max(1, buffer_chars)
        # Hold mode checks new text in batches: when this many characters are waiting, or this
        # long after the previous check (about one UI update), whichever comes first.
        self.check_every_chars = max(1, check_every_chars)
        self.check_every_s = check_every_s
        self.stream_id = stream_id
        self._clock = clock
        self.max_match = max((p.max_match for p in self.policies), default=1)
        # Policies whose matches have no natural end (a key of unknown length) cap them at
        # max_match; a capped match may go on beyond what was matched.
        self._caps = {p.name: p.max_match for p in self.policies if getattr(p, "open_ended", False)}
        # Where a value that goes on ends (policy -> kind -> pattern), and the kinds whose match
        # is only the start of what must go (a PEM header).
        self._continuations: dict[str, Mapping[str, re.Pattern[str]]] = {
            p.name: getattr(p, "continuations", {}) for p in self.policies
        }
        self._always_continue: dict[str, frozenset[str]] = {
            p.name: getattr(p, "always_continues", frozenset()) for p in self.policies
        }
        # Each check calls these for every policy: looked up once. A `find` and `hold_from`
        # that accept `since` are called with it, and a policy's quick question (Quiet) is
        # asked first when it has one (see Policy).
        self._checks: tuple[
            tuple[str, Callable[..., list[Match]], Callable[..., int] | None, bool, Quiet | None],
            ...,
        ] = tuple(
            (
                p.name,
                p.find,
                getattr(p, "hold_from", None),
                getattr(p, "accepts_since", False) is True,
                _quiet(p, self.max_match),
            )
            for p in self.policies
        )
        self.record = GuardRecord(policies=tuple(p.name for p in self.policies))
        self._norm = Normalizer()
        self._unreleased = ""  # original text after the release point (bounded by the hold)
        self._released = 0  # original characters passed on (shown, redacted or skipped)
        self._scanned = 0  # normalised characters scanned so far
        self._resume = 0  # normalised position before which no match can be in progress
        self._last_check = -math.inf
        self._shown: list[str] = []
        self._shown_length = 0
        self._handled: dict[tuple[int, int, str], str] = {}  # decided match -> policy name
        self._capped: set[tuple[int, int, str]] = set()  # decided because they outgrew the window
        self._swallow: _Swallow | None = None
        self._redacted: list[tuple[int, int]] = []  # normalised spans replaced by a label
        self._arrivals: deque[tuple[int, float]] = deque()  # (original length, time)
        self.stopped = False

    @property
    def shown_text(self) -> str:
        """Exactly what has been released so far (after redaction or retraction)."""
        return "".join(self._shown)

    # --- the stream ---------------------------------------------------------------------------

    def feed(self, text: str) -> GuardStep:
        if self.stopped or not text:
            return GuardStep(stopped=self.stopped)
        if not self.policies:
            self._emit(text)
            return GuardStep(release=text)
        self._unreleased += text
        norm = self._norm
        norm.feed(text)
        if self.mode == "buffered":
            return self._feed_buffered()
        now = self._clock()
        self._arrivals.append((norm.original_length, now))
        # The checks cost about the same for a character or a sentence: once the first text is
        # out (no delay to the first token), a feed that comes soon after the last check, with
        # little new text, waits for the next one.
        if (
            self._released > 0
            and norm.length - self._scanned < self.check_every_chars
            and now - self._last_check < self.check_every_s * _BATCH_SLACK
        ):
            return GuardStep()
        self._last_check = now
        return self._feed_hold(final=False, now=now)

    @property
    def unchecked(self) -> bool:
        """Hold mode: text has arrived that no check has covered yet (a batch is waiting)."""
        return (
            self.mode == "hold"
            and bool(self.policies)
            and not self.stopped
            and self._norm.length > self._scanned
        )

    def check(self) -> GuardStep:
        """Check the waiting batch now instead of with the next piece: the stream has paused,
        and what is safe in it should not wait for more text to be released."""
        if not self.unchecked:
            return GuardStep(stopped=self.stopped)
        self._last_check = now = self._clock()
        return self._feed_hold(final=False, now=now)

    def finish(self) -> GuardStep:
        """The stream ended: decide everything still open and release the rest if it is safe."""
        if self.stopped or not self.policies:
            return GuardStep(stopped=self.stopped)
        if self.mode == "buffered":
            step = self._check_buffered(final=True)
        else:
            step = self._feed_hold(final=True, now=self._clock())
        if not step.stopped:
            self._final_check()
        return step

    # --- hold mode ----------------------------------------------------------------------------

    def _feed_hold(self, *, final: bool, now: float) -> GuardStep:
        scan = None
        if self._swallow is None:
            scan = self._scan(final=final)
            if not final and not scan[0] and scan[1] is None:
                return self._release_safe(scan[2], now)  # most checks: nothing found
        out: list[str] = []
        while True:
            if self._swallow is not None and not self._read_swallowed(final=final):
                if self.stopped:
                    return GuardStep(
                        release="".join(out), violation=self.record.violations[-1], stopped=True
                    )
                self._note_hold(now)
                return GuardStep(release="".join(out))
            step = self._hold_pass(out, final=final, now=now, scan=scan)
            scan = None
            if step is not None:
                return step
            # A redaction started reading on to the end of a value: see how far it goes.

    def _release_safe(self, hold_start: int, now: float) -> GuardStep:
        """A scan found nothing: release what no violation can still be in progress in."""
        self._resume = hold_start
        safe = self._norm.to_original(hold_start) if hold_start > 0 else 0
        if self._released == 0:
            safe = self._first_release(safe)
        released = self._take(safe)
        self._note_hold(now)
        return GuardStep(release=released)

    def _hold_pass(
        self,
        out: list[str],
        *,
        final: bool,
        now: float,
        scan: tuple[list[Match], int | None, int] | None = None,
    ) -> GuardStep | None:
        """Act on the matches found in one scan (`scan`, or a new one). None when a redacted
        value goes on beyond what has been scanned (the caller reads on to its end and scans
        again)."""
        matches, tentative_start, hold_start = scan or self._scan(final=final)
        # A match still growing may start before a decided one: nothing from its start on may
        # be released, whatever happens to the decided one.
        limit = None if tentative_start is None else self._norm.to_original(tentative_start)
        for index, match in enumerate(matches):
            start = self._norm.to_original(match.start)
            end = self._norm.to_original(match.end)
            if start < self._released:
                continue  # inside text already dealt with (an earlier redaction)
            policy = self._handled.get((match.start, match.end, match.kind), "guardrails")
            violation = self._violation(match, start, end, policy)
            out.append(self._take(start if limit is None else min(start, limit)))
            blocked_by_growing = limit is not None and limit < start
            goes_on = self._goes_on(match, policy)
            continuation = self._continuations.get(policy, {}).get(match.kind)
            if (
                self.action == "redact"
                and not blocked_by_growing
                and (not goes_on or continuation is not None)
            ):
                self._skip(end)
                self._emit(violation.label)
                out.append(violation.label)
                self.record.redactions += 1
                self._redacted.append((match.start, match.end))
                if goes_on and continuation is not None:
                    self._begin_swallow(match, policy, continuation, later=matches[index + 1 :])
                    return None
                continue
            return self._stop(violation, "".join(out))
        if final:
            safe = self._norm.original_length
        else:
            # Before anything where a violation could still be in progress, and before any
            # match that may still grow.
            safe_norm = hold_start
            if tentative_start is not None and tentative_start < safe_norm:
                safe_norm = tentative_start
            self._resume = safe_norm
            safe = self._norm.to_original(safe_norm) if safe_norm > 0 else 0
            if self._released == 0:
                safe = self._first_release(safe)
        released = self._take(safe)
        self._note_hold(now)
        if out:
            out.append(released)
            return GuardStep(release="".join(out))
        return GuardStep(release=released)

    def _first_release(self, safe: int) -> int:
        """The first text shown ends between words: the UI sends its first update at once and
        the next one an update interval later, so a first update cut inside a word ("w" of
        "w0") would leave the first word waiting for that. Until a word is whole, nothing is
        released and every piece is checked (the batching starts after the first release);
        a first word longer than a batch is released as it is checked."""
        if safe <= 0 or safe >= len(self._unreleased):
            return safe
        text = self._unreleased
        if not (text[safe - 1].isalnum() and text[safe].isalnum()):
            return safe
        cut = safe
        while cut > 0 and text[cut - 1].isalnum():
            cut -= 1
        # Text without spaces (Chinese, a long identifier) is released as it is.
        return cut if safe - cut <= self.check_every_chars else safe

    def _goes_on(self, match: Match, policy: str) -> bool:
        """Whether the value may go on beyond the match: a match as long as its policy's cap
        (a key cut at max_match), one decided because it outgrew the window, or a kind whose
        match is only a beginning (a PEM header). Redacting only the match would show the rest:
        redact reads on to the value's end, or stops the stream (fail closed)."""
        key = (match.start, match.end, match.kind)
        if key in self._capped or match.kind in self._always_continue.get(policy, ()):
            return True
        cap = self._caps.get(policy, 0)
        return cap > 0 and match.end - match.start >= cap

    def _begin_swallow(
        self, match: Match, policy: str, end: re.Pattern[str], *, later: list[Match]
    ) -> None:
        self._swallow = _Swallow(policy, match.kind, match.start, match.end, end)
        # Matches after this one were found in text that may belong to the value: forget them,
        # they are looked for again once the value has ended.
        for other in later:
            self._handled.pop((other.start, other.end, other.kind), None)
        self._scanned = self._resume = match.end

    def _read_swallowed(self, *, final: bool) -> bool:
        """Pass over the rest of a redacted value. True once it has ended (scanning goes on
        after it); False while it may still go on, or when it went on too long (stopped)."""
        swallow = self._swallow
        assert swallow is not None
        length = len(self._norm)
        found = swallow.end.search(self._norm.window(swallow.search_from, length))
        if found is not None or final:
            end = swallow.search_from + found.end() if found is not None else length
            self._skip(self._norm.to_original(end))
            self._redacted[-1] = (self._redacted[-1][0], end)
            self._swallow = None
            self._scanned = self._resume = end
            return True
        if length - swallow.start > _SWALLOW_LIMIT:
            match = Match(swallow.start, length, swallow.kind)
            start = self._norm.to_original(swallow.start)
            self._stop(self._violation(match, start, self._released, swallow.policy), "")
            return False
        # All of it belongs to the value; an end marker may be arriving in pieces, so the next
        # search starts a little before the end.
        self._skip(self._norm.original_length)
        swallow.search_from = max(swallow.search_from, length - _END_MARKER_REACH)
        return False

    # --- buffered mode ------------------------------------------------------------------------

    def _feed_buffered(self) -> GuardStep:
        if len(self._norm) - self._scanned >= self.buffer_chars:
            step = self._check_buffered(final=False)
            if step.stopped:
                return step
        return GuardStep(release=self._take(self._norm.original_length))

    def _check_buffered(self, *, final: bool) -> GuardStep:
        # Shown text cannot wait for a match to finish growing: act on any match at once.
        self._resume = max(0, self._scanned - (self.max_match - 1))
        matches, _, _ = self._scan(final=True)
        if not matches:
            return GuardStep()
        first = matches[0]
        start = self._norm.to_original(first.start)
        policy = self._handled.get((first.start, first.end, first.kind), "guardrails")
        violation = self._violation(first, start, self._norm.to_original(first.end), policy)
        if start < self._released:
            # Shown already: retract to the last safe prefix (buffered text is shown verbatim).
            self._shown = [self.shown_text[:start]]
            self._shown_length = start
            self._stop(violation, "")
            return GuardStep(violation=violation, retract_to=start, stopped=True)
        return self._stop(violation, self._take(start))

    # --- scanning -----------------------------------------------------------------------------

    def _scan(self, *, final: bool) -> tuple[list[Match], int | None, int]:
        """New decided matches (absolute normalised positions, in order, not overlapping), the
        start of the earliest match that may still grow, and (unless `final`) the earliest
        position where a violation could still be in progress (the hold start).

        The window starts _CONTEXT characters before the earliest place a match could still be
        in progress (the hold start of the previous scan, at most max_match back), so a match
        split across any chunk boundary is seen whole, with the text just before it that a
        policy may look at. The hold start is at most max_match back, less where every policy
        can tell from the newest max_match characters (see Policy). Each policy is asked both
        in one pass."""
        norm = self._norm
        end = norm.length
        since = self._resume if self._resume < self._scanned else self._scanned
        start = since - _CONTEXT if since > _CONTEXT else 0
        window = norm.window(start)
        if final:
            tail, tail_start = "", end
        else:
            tail_start = end - self.max_match if end > self.max_match else 0
            tail = window[tail_start - start :] if tail_start >= start else norm.window(tail_start)
        # Everything before the previous hold start is released: a policy that can use it looks
        # for what is still in progress from there on.
        hold_since = self._resume - tail_start if self._resume > tail_start else 0
        offset = len(tail)
        decided: list[Match] | None = None
        still_open: dict[tuple[int, str], str] | None = None
        # The policies' quick questions read from the earlier of the window and the tail (both
        # end at the newest text), and only ASCII text.
        whole, whole_start = (window, start) if start <= tail_start else (tail, tail_start)
        plain = whole.isascii()
        backwards = ""
        for name, find, hold_from, accepts_since, quiet in self._checks:
            if quiet is not None and plain:
                ask_from = since - quiet.reach
                if end - quiet.tail < ask_from:
                    ask_from = end - quiet.tail
                ask_from -= whole_start
                if quiet.pattern.search(whole, ask_from if ask_from > 0 else 0) is None:
                    # Nothing found, and the hold read backwards from the end (most checks).
                    if not final and offset and quiet.hold.pattern:  # "" holds nothing
                        if not backwards:
                            backwards = tail[::-1]
                        held = len(tail) - quiet.hold.match(backwards).end()  # type: ignore[union-attr]
                        if held < hold_since:
                            held = hold_since
                        if held < offset:
                            offset = held
                    continue
            try:
                # Everything before `since` is decided: a policy that can use it looks for new
                # matches from there only (the window before it is context).
                found = find(window, since - start) if accepts_since else find(window)
            except Exception:
                # A check that fails must not let text through: the whole window violates.
                log.exception("guardrail policy %s failed; failing closed", name)
                self.record.check_errors += 1
                self.record.failed_policies.append(name)
                found = [Match(0, len(window), "check_error")]
            if found:  # most checks find nothing
                if decided is None or still_open is None:
                    decided, still_open = [], {}
                self._sort_out(found, name, start, end, final, decided, still_open)
            if final or offset == 0:
                continue
            if hold_from is None:
                offset = 0
                continue
            try:
                held = hold_from(tail, hold_since) if accepts_since else hold_from(tail)
            except Exception:
                log.exception("guardrail policy %s failed to say what to hold", name)
                held = 0  # fail closed: hold everything
            if held < offset:
                offset = held
        self._scanned = end
        hold_start = tail_start + offset if offset > 0 else tail_start
        if decided is None or still_open is None:
            return [], None, hold_start
        decided.sort(key=lambda m: (m.start, -m.end))
        kept: list[Match] = []
        for match in decided:
            if not kept or match.start >= kept[-1].end:
                kept.append(match)
        tentative = min((s for s, _ in still_open), default=None)
        return kept, tentative, hold_start

    def _sort_out(
        self,
        found: list[Match],
        name: str,
        start: int,
        end: int,
        final: bool,
        decided: list[Match],
        still_open: dict[tuple[int, str], str],
    ) -> None:
        """A policy's matches in a window from `start`: new decided ones go to `decided` (and
        are remembered), ones that may still grow to `still_open`."""
        for match in found:
            absolute = Match(match.start + start, match.end + start, match.kind)
            key = (absolute.start, absolute.end, absolute.kind)
            if key in self._handled:
                continue
            # A match ending at, or one character before, the newest text may still grow:
            # numbers go on after a separator ("4111 1111" + " 1111").
            growing = absolute.end >= end - _GROWTH_MARGIN or match.pending
            if growing and not final and absolute.kind != "check_error":
                if absolute.start >= end - self.max_match - _GROWTH_MARGIN:
                    still_open[(absolute.start, absolute.kind)] = name
                    continue
                # It has grown beyond max_match while still going on: decided now as a
                # capped match (stop, or redact reading on to its end).
                absolute = Match(absolute.start, absolute.start + self.max_match, match.kind)
                key = (absolute.start, absolute.end, absolute.kind)
                self._capped.add(key)
            self._handled[key] = name
            decided.append(absolute)

    # --- helpers ------------------------------------------------------------------------------

    def _violation(self, match: Match, start: int, end: int, policy: str) -> Violation:
        violation = Violation(policy, match.kind, start, end, label(match.kind))
        self.record.violations.append(violation)
        # Never the matched text: policy, kind, position and stream only.
        log.warning(
            "guardrail violation stream=%s policy=%s kind=%s start=%d end=%d action=%s",
            self.stream_id,
            policy,
            match.kind,
            start,
            end,
            self.action,
        )
        return violation

    def _stop(self, violation: Violation, release: str) -> GuardStep:
        self.stopped = True
        self.record.released_before_stop = self._shown_length
        self._unreleased = ""
        return GuardStep(release=release, violation=violation, stopped=True)

    def _take(self, upto: int) -> str:
        """Release original text from the release point up to original index `upto`."""
        released = self._released
        if upto <= released:
            return ""
        count = upto - released
        unreleased = self._unreleased
        if count >= len(unreleased):
            text, self._unreleased = unreleased, ""
        else:
            text, self._unreleased = unreleased[:count], unreleased[count:]
        self._released = upto
        self._shown.append(text)
        self._shown_length += count
        return text

    def _skip(self, upto: int) -> None:
        """Pass over original text without showing it (it was redacted)."""
        count = max(0, upto - self._released)
        self._unreleased = self._unreleased[count:]
        self._released = max(self._released, upto)

    def _emit(self, text: str) -> None:
        if text:
            self._shown.append(text)
            self._shown_length += len(text)

    def _note_hold(self, now: float) -> None:
        """After a check: the most text held, and the longest any text waited from its arrival
        to this check (released by it, or still held)."""
        record, arrivals, released = self.record, self._arrivals, self._released
        held = self._norm.original_length - released
        if held > record.max_held_chars:
            record.max_held_chars = held
        if arrivals:
            # The oldest piece not wholly released before this check.
            waited = now - arrivals[0][1]
            if waited > record.max_hold_s:
                record.max_hold_s = waited
            while arrivals and arrivals[0][0] <= released:
                arrivals.popleft()

    def _final_check(self) -> None:
        """One check over the whole answer. Normalisation is per character, so whole-text
        positions equal the stream's; anything found here that the stream check did not decide
        (outside what was redacted) is a guard bug: logged loudly and counted, never silent."""
        whole = self._norm.window(0)
        for policy in self.policies:
            try:
                found = policy.find(whole)
            except Exception:
                log.exception("guardrail policy %s failed in the final check", policy.name)
                self.record.check_errors += 1
                self.record.failed_policies.append(policy.name)
                continue
            missed = [
                m
                for m in found
                if (m.start, m.end, m.kind) not in self._handled
                and not any(s < m.end and m.start < e for s, e in self._redacted)
            ]
            if missed:
                self.record.check_errors += 1
                log.error(
                    "final check found %d match(es) the stream check missed (stream=%s policy=%s)",
                    len(missed),
                    self.stream_id,
                    policy.name,
                )


def _quiet(policy: Policy, max_match: int) -> Quiet | None:
    """The policy's quick question, if it has one the guard can ask: one that takes `since` and
    reads no further back than the window's context and the tail reach."""
    quiet = getattr(policy, "quiet", None)
    if (
        not isinstance(quiet, Quiet)
        or getattr(policy, "accepts_since", False) is not True
        or quiet.reach > _CONTEXT
        or quiet.tail > max_match
    ):
        return None
    return quiet


def check_text(policies: Sequence[Policy], text: str) -> list[Violation]:
    """Check a whole text (a user's message) with the same policies; violations in order."""
    guard = Guard(policies, mode="hold", action="redact")
    guard.feed(text)
    guard.finish()
    return list(guard.record.violations)
