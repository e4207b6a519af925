"""The Classroom chat profile in Chainlit: commands, settings and views over the classroom
tools in `classroom.py`. app.py calls into this module; the streaming core stays UI-free.

Every answer in the Classroom profile is recorded chunk by chunk. Under it come a collapsed
"Raw chunks" step and two actions, "Token boundaries" and "Latency timeline". Commands (typed
with `/` or picked in the composer) run the demos: normal vs streaming, side by side, guardrail
demo and fault demo. The "Slow motion" setting paces every classroom answer on screen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import chainlit as cl
from chainlit.context import context
from chainlit.input_widget import Select, Slider

from streamchat.agent.run import agent_resilience, agent_source, tapped_client
from streamchat.agent.steps import PROFILE as AGENT_PROFILE
from streamchat.agent.steps import ToolSteps
from streamchat.chat import ChatSession
from streamchat.classroom.tools import (
    CHART_CONFIG,
    SPEEDS,
    ChunkLog,
    DroppingSource,
    PacedSink,
    Speed,
    Timeline,
    race,
    race_table,
    token_view,
)
from streamchat.core.errors import ConfigError
from streamchat.core.relay import StreamResult, StreamRun
from streamchat.core.sinks import ChainlitSink, Sink
from streamchat.core.types import Delta
from streamchat.languages import label, starter_questions
from streamchat.pipeline import check_temperature
from streamchat.runtime import Runtime
from streamchat.settings import Settings

log = logging.getLogger("streamchat.classroom")

PROFILE = "Classroom"
CHAT_PROFILE = "Chat"
AGENT_TAGLINE = {
    "en": (
        "An agent with tools: each tool call is a step showing its arguments as they stream, "
        "its result and how long it took; the answer streams through the same guardrails."
    ),
    "hinglish": (
        "Tools wala agent: har tool call ek step hai jismein arguments aate hue dikhte hain, "
        "phir result aur kitna waqt laga; jawab usi guardrails se stream hota hai."
    ),
}
AGENT_STARTERS = (
    "What is 17 * 23?",
    "What is 2+2 and what time is it?",
    "Search the lessons for guardrails",
)
KEEP_ANSWERS = 20  # answers whose chunk logs are kept for the token and timeline views
FAULT_AFTER_TOKENS = 20

GUARDRAIL_DEMO_PROMPT = (
    "Guardrail demo: in two sentences about streaming, include the example email address "
    "jane.doe@example.com."
)
FAULT_DEMO_PROMPT = "Why does time to first token matter?"
AGENT_DEMO_PROMPT = "What is 17 * 23?"
# The Agent demo's words, in each answer language.
AGENT_DEMO_TEXT = {
    "en": {
        "title": "Agent demo",
        "intro": (
            "The model did not answer in text first: it streamed a **tool call**. Each chunk "
            "below carries a piece of the call's arguments in `delta.tool_calls`; the step "
            "above showed the same pieces as they came, then the tool's result."
        ),
        "chunk": "chunk",
        "piece": "arguments piece in the chunk",
        "step": "the step shows",
        "none": "No tool call this time: the model answered in text.",
        "raw": "Raw chunks of the tool calls",
        "note": "*This demo answer is not added to the conversation.*",
    },
    "hinglish": {
        "title": "Agent demo",
        "intro": (
            "Model ne pehle text mein jawab nahi diya: usne ek **tool call** stream kiya. "
            "Neeche har chunk mein `delta.tool_calls` ke andar arguments ka ek tukda hai; upar "
            "wala step wahi tukde aate hi dikhata raha, phir tool ka result."
        ),
        "chunk": "chunk",
        "piece": "chunk mein arguments ka tukda",
        "step": "step mein dikhta hai",
        "none": "Is baar tool call nahi hua: model ne text mein jawab diya.",
        "raw": "Tool calls ke raw chunks",
        "note": "*Yeh demo jawab baat-cheet mein shamil nahi hota.*",
    },
}

# Commands in the composer: (id, lucide icon, description).
COMMANDS = (
    ("Compare", "git-compare", "Normal vs streaming: the same question both ways, side by side"),
    ("SideBySide", "columns-2", "Side by side: the same question to two models or settings"),
    ("GuardrailDemo", "shield-alert", "Guardrail demo: a violation held back and stopped"),
    ("FaultDemo", "unplug", "Fault demo: the connection drops mid-answer; watch the resume"),
    ("AgentDemo", "wrench", "Agent demo: a tool call's raw chunks beside its step"),
)

# Starters for the main lessons: (label, message, command).
STARTERS = (
    ("What is a token?", "What is a token?", None),
    ("What does stream=True do?", "What does stream=True do?", None),
    ("Normal vs streaming", "Explain time to first token", "Compare"),
    ("Guardrail demo", GUARDRAIL_DEMO_PROMPT, "GuardrailDemo"),
    ("Fault demo", FAULT_DEMO_PROMPT, "FaultDemo"),
    ("Agent demo", AGENT_DEMO_PROMPT, "AgentDemo"),
)


ICON = "/public/streamchat.svg"


@dataclass(frozen=True, slots=True)
class AnswerSource:
    """Where answers come from, as the welcome screen names it: the offline demo model, or a
    model at a provider (`where` is a host or URL without credentials)."""

    offline: bool
    model: str = ""
    where: str = ""

    @classmethod
    def of(cls, settings: Settings) -> AnswerSource:
        return cls(settings.offline, settings.model or "", settings.provider_label)


def welcome(
    source: AnswerSource | None, language: str, *, classroom: bool = False, agent: bool = False
) -> str:
    """The welcome screen's text (Markdown): the name, what the app does, what answers."""
    tagline = (
        AGENT_TAGLINE.get(language, AGENT_TAGLINE["en"])
        if agent
        else label("classroom_tagline" if classroom else "tagline", language)
    )
    lines = ["## streamchat", tagline]
    if source is not None and source.offline:
        lines.append(label("offline_source", language))
    elif source is not None:
        lines.append(
            label("provider_source", language).format(
                model=source.model or "default model", where=source.where
            )
        )
    if not classroom:
        lines.append(label("settings_hint", language))
    return "\n\n".join(lines)


def chat_profiles(source: AnswerSource | None, language: str) -> list[cl.ChatProfile]:
    """The Chat and Classroom profiles, each with its welcome text and starters."""
    return [
        cl.ChatProfile(
            name=CHAT_PROFILE,
            icon=ICON,
            markdown_description=welcome(source, language),
            default=True,
            starters=[
                cl.Starter(label=question, message=question, icon=ICON)
                for question in starter_questions(language)
            ],
        ),
        cl.ChatProfile(
            name=PROFILE,
            icon=ICON,
            markdown_description=welcome(source, language, classroom=True),
            starters=[
                cl.Starter(label=text, message=message, command=command, icon=ICON)
                for text, message, command in STARTERS
            ],
        ),
        cl.ChatProfile(
            name=AGENT_PROFILE,
            icon=ICON,
            markdown_description=welcome(source, language, agent=True),
            starters=[
                cl.Starter(label=question, message=question, icon=ICON)
                for question in AGENT_STARTERS
            ],
        ),
    ]


def is_classroom() -> bool:
    return bool(context.session and context.session.chat_profile == PROFILE)


@dataclass
class _Lane:
    task: asyncio.Task[Any] | None = None


@dataclass
class ClassroomState:
    """One classroom chat's choices and the data behind its views."""

    speed: Speed = field(default_factory=lambda: Speed(factor=1.0))
    second_model: str = ""
    second_temperature: float = 1.2
    answers: OrderedDict[str, tuple[ChunkLog, StreamResult]] = field(default_factory=OrderedDict)
    lanes: dict[str, _Lane] = field(default_factory=dict)
    paced: weakref.WeakSet[PacedSink] = field(default_factory=weakref.WeakSet)

    def remember(self, answer_id: str, chunks: ChunkLog, result: StreamResult) -> None:
        self.answers[answer_id] = (chunks, result)
        while len(self.answers) > KEEP_ANSWERS:
            self.answers.popitem(last=False)

    def apply(self, values: dict[str, Any]) -> list[str]:
        """Take the classroom settings from a settings update; returns problems to show."""
        problems = []
        if "slow_motion" in values:
            try:
                self.speed = Speed.parse(str(values["slow_motion"]))
            except ValueError as exc:
                problems.append(str(exc))
        if "second_model" in values:
            self.second_model = str(values["second_model"] or "").strip()
        if "second_temperature" in values:
            try:
                self.second_temperature = check_temperature(
                    values["second_temperature"], name="The second temperature"
                )
            except ConfigError as exc:
                problems.append(str(exc))
        return problems


def state() -> ClassroomState:
    current = cl.user_session.get("classroom")
    if current is None:
        current = ClassroomState()
        cl.user_session.set("classroom", current)
    return current


def settings_widgets(chat: ChatSession, models: list[str]) -> list[object]:
    """The classroom's settings, shown after the chat's own."""
    language = chat.options.language
    values = list(dict.fromkeys([*(models or []), chat.options.model]))
    values = [value for value in values if value]
    current = state()
    return [
        Select(
            id="slow_motion",
            label=label("slow_motion", language),
            values=list(SPEEDS),
            initial_value=str(current.speed) if str(current.speed) in SPEEDS else SPEEDS[0],
            description="Paces the answer on screen so a room can follow (any model).",
        ),
        Select(
            id="second_model",
            label=f"{label('side_by_side', language)}: {label('second_model', language)}",
            values=values or [chat.options.model or "default"],
            initial_value=current.second_model or (values[0] if values else "default"),
        ),
        Slider(
            id="second_temperature",
            label=f"{label('side_by_side', language)}: {label('second_temperature', language)}",
            initial=current.second_temperature,
            min=0,
            max=2,
            step=0.1,
        ),
    ]


async def start() -> None:
    """Classroom chat start: the commands in the composer."""
    await context.emitter.set_commands(
        [
            {
                "id": command,
                "icon": icon,
                "description": description,
                "button": False,
                "persistent": False,
                "selected": False,
            }
            for command, icon, description in COMMANDS
        ]
    )


# What Chainlit shows on Stop before anything else; the answer's own marker says it better.
CHAINLIT_STOP_NOTICE = "Task manually stopped."


async def after_stop() -> None:
    """Chainlit's on_stop: the screen stops at once (slow-motion answers show nothing more),
    and Chainlit's own "Task manually stopped." bubble goes, as the stopped answer ends with
    "(Stopped by you after N tokens.)"."""
    current = cl.user_session.get("classroom")
    if isinstance(current, ClassroomState):
        for paced in list(current.paced):
            paced.stop()
        current.paced.clear()
    for message in reversed(cl.chat_context.get()):
        if message.type == "assistant_message" and message.content == CHAINLIT_STOP_NOTICE:
            await message.remove()
            break


SinkFactory = Callable[[cl.Message], ChainlitSink]
ErrorShower = Callable[[str], Awaitable[None]]


class Classroom:
    """Handles one classroom message. `make_sink(message)` builds the app's Chainlit sink."""

    def __init__(
        self,
        chat: ChatSession,
        make_sink: SinkFactory,
        show_error: ErrorShower,
        runtime: Runtime | None = None,
    ):
        self.chat = chat
        self.make_sink = make_sink
        self.show_error = show_error
        self.runtime = runtime  # the agent demo's provider and settings
        self.state = state()

    @property
    def language(self) -> str:
        return self.chat.options.language

    def _paced(self, sink: Sink) -> Sink:
        if self.state.speed.is_real_time:
            return sink
        paced = PacedSink(sink, self.state.speed)
        self.state.paced.add(paced)  # so Stop ends its pacing (`after_stop`)
        return paced

    async def handle(self, text: str, command: str | None) -> None:
        handlers = {
            "Compare": self.compare,
            "SideBySide": self.side_by_side,
            "GuardrailDemo": self.guardrail_demo,
            "FaultDemo": self.fault_demo,
            "AgentDemo": self.agent_demo,
        }
        handler = handlers.get(command or "")
        if handler is not None:
            await handler(text)
        else:
            await self.answer(text)

    async def answer(self, text: str, *, source: Any = None) -> StreamResult:
        """An ordinary answer, recorded for the views, paced when slow motion is on."""
        chunks = ChunkLog()
        message = cl.Message(content="")
        result = await self.chat.answer(
            text,
            self._paced(self.make_sink(message)),
            on_delta=chunks,
            source=source,
            on_run=lambda _run: chunks.restart_clock(),
        )
        await self._views(message, chunks, result)
        return result

    async def _views(self, message: cl.Message, chunks: ChunkLog, result: StreamResult) -> None:
        if not chunks.count or not message.id:
            return
        self.state.remember(message.id, chunks, result)
        step = cl.Step(
            name=label("raw_chunks_step", self.language).format(count=chunks.count),
            type="tool",
            parent_id=message.id,
            show_input=False,
            language="text",
        )
        step.output = chunks.render()
        await step.send()
        for name in ("token_view", "timeline"):
            action = cl.Action(
                name=name, label=label(name, self.language), payload={"answer": message.id}
            )
            await action.send(for_id=message.id)

    async def _kept_answer(self, answer_id: str) -> tuple[ChunkLog, StreamResult] | None:
        """An answer's chunks and result, or None (and a message saying so) once dropped."""
        found = self.state.answers.get(answer_id)
        if found is None:
            await self.show_error("That answer is too old: its chunks are no longer kept.")
        return found

    async def show_tokens(self, answer_id: str) -> None:
        if (found := await self._kept_answer(answer_id)) is None:
            return
        chunks, result = found
        view = token_view(chunks, result)
        billed = (
            f", billed {view.usage_tokens}" if view.usage_tokens not in (None, view.count) else ""
        )
        content = (
            f"**{label('token_view', self.language)}**: {view.count} "
            f"{label('tokens', self.language)}{billed}"
        )
        element = cl.CustomElement(name="TokenView", props=view.props(), display="inline")
        await cl.Message(content=content, elements=[element], parent_id=answer_id).send()

    async def show_timeline(self, answer_id: str) -> None:
        if (found := await self._kept_answer(answer_id)) is None:
            return
        chunks, result = found
        timeline = Timeline.of(chunks, result)
        title = label("timeline", self.language)
        figure = timeline.figure(title=title, tokens_label=label("tokens", self.language))
        element = cl.Plotly(name="timeline", figure=figure, display="inline")
        # Chainlit's Plotly view reads a "config" beside the figure's data and layout.
        element.content = json.dumps({**json.loads(element.content), "config": CHART_CONFIG})
        summary = result.stats.summary()
        await cl.Message(
            content=f"**{title}**: {summary}", elements=[element], parent_id=answer_id
        ).send()

    async def compare(self, text: str) -> None:
        """The same question without and with streaming, at the same time."""
        unstreamed = self.chat.pipeline.unstreamed()
        if unstreamed is None:
            await self.show_error("Normal vs streaming needs a provider that answers both ways.")
            return
        question = text.strip() or "Explain time to first token"
        request = self.chat.request_for(question)
        normal, streamed = label("not_streamed", self.language), label("streamed", self.language)
        normal_message = cl.Message(content="", author=normal)
        streamed_message = cl.Message(content="", author=streamed)
        lanes = await race(
            [
                (
                    normal,
                    lambda sink: self.chat.new_run(sink, source=unstreamed),
                    self.make_sink(normal_message),
                ),
                (streamed, lambda sink: self.chat.new_run(sink), self.make_sink(streamed_message)),
            ],
            request,
        )
        table = race_table(
            lanes,
            first_text=label("first_text", self.language),
            total=label("total_time", self.language),
        )
        await cl.Message(
            content=f"**{label('compare', self.language)}**\n\n{table}\n\n"
            "*These answers are not added to the conversation.*",
            metadata={"classroom": "compare"},
        ).send()

    async def side_by_side(self, text: str) -> None:
        """The same question to two models (or settings), streaming at the same time, each
        message headed by what its lane is, each lane with its own Stop (LaneControls)."""
        question = text.strip() or "What is a token?"
        options = self.chat.options
        second_model = self.state.second_model or options.model
        setups = [
            ("A", options.model, options.temperature, {}),
            (
                "B",
                second_model,
                self.state.second_temperature,
                {"model": second_model, "temperature": self.state.second_temperature},
            ),
        ]
        lanes = [
            {
                "id": uuid.uuid4().hex[:12],
                "name": f"{letter} · {model or 'default model'} · temperature {temperature:g}",
                "state": "streaming",
            }
            for letter, model, temperature, _ in setups
        ]
        controls = cl.CustomElement(
            name="LaneControls",
            props={"lanes": lanes, "stop": label("stop_lane", self.language)},
            display="inline",
        )
        controls_shown = asyncio.Event()

        async def lane(letter: str, about: dict[str, Any], changes: dict[str, Any]) -> None:
            # An author name Chainlit can fetch an avatar for (letters, digits, spaces).
            message = cl.Message(content="", author=f"Lane {letter}")
            chunks = ChunkLog()
            sink = _Headed(self.make_sink(message), f"**{about['name']}**\n\n")
            run: StreamRun = self.chat.new_run(sink, chunks)
            result: StreamResult | None = None
            try:
                await controls_shown.wait()  # the lanes' messages come after their controls
                result = await run.run(self.chat.request_for(question, **changes))
            except asyncio.CancelledError:
                pass  # stopped: the run has finished the lane's message
            finally:
                self.state.lanes.pop(about["id"], None)
                about["state"] = "stopped" if result is None else result.reason.value
                controls.props = {**controls.props, "lanes": lanes}
                await controls.update()
            if result is not None:
                await self._views(message, chunks, result)

        tasks = [
            asyncio.create_task(lane(letter, about, changes))
            for (letter, _, _, changes), about in zip(setups, lanes, strict=True)
        ]
        # Stoppable from the moment their Stop buttons can be seen.
        for about, task in zip(lanes, tasks, strict=True):
            self.state.lanes[about["id"]] = _Lane(task=task)
        try:
            await cl.Message(
                content=f"**{label('side_by_side', self.language)}**: "
                + "; ".join(f"**{lane['name']}**" for lane in lanes),
                elements=[controls],
                metadata={"classroom": "side_by_side"},
            ).send()
            controls_shown.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def stop_lane(self, lane_id: str) -> bool:
        entry = self.state.lanes.get(lane_id)
        if entry is None or entry.task is None:
            return False
        entry.task.cancel()
        return True

    async def guardrail_demo(self, text: str) -> None:
        """A violation on purpose, with the guardrails on in hold mode whatever the settings
        say: the answer stops, and a step explains what the hold-back window did."""
        operator = self.chat.guardrails
        config = operator if operator.locked else replace(operator, mode="hold")
        if not config.policies:
            await self.show_error(
                "The guardrail demo needs at least one guardrail policy; GUARDRAILS is off."
            )
            return
        prompt = text.strip() or GUARDRAIL_DEMO_PROMPT
        chunks = ChunkLog()
        message = cl.Message(content="")
        run = self.chat.new_run(self._paced(self.make_sink(message)), chunks, guardrails=config)
        result = await run.run(self.chat.request_for(prompt))
        await self._views(message, chunks, result)
        record = run.guard.record if run.guard is not None else None
        lines = [f"**{label('guardrail_demo', self.language)}** (mode: {config.mode})"]
        if record is not None:
            lines.append(
                f"- Text was held back at most **{record.max_held_chars} characters** "
                f"(at most {record.max_hold_s * 1000:.0f} ms) before it was shown."
            )
        if result.violation is not None:
            lines.append(
                f"- The guard found {result.violation.kind} ({result.violation.policy} policy) "
                + (
                    "while it was still held back, so it never reached the screen."
                    if config.mode == "hold"
                    else "after it was shown, so the answer was cut back to the last safe point."
                )
            )
            lines.append(
                f"- The stream stopped after {result.stats.completion_tokens} tokens and the "
                "upstream request was closed."
            )
        elif record is not None and record.redactions:
            lines.append(f"- {record.redactions} matches were replaced with labels (redact mode).")
        else:
            lines.append("- No violation this time: the model did not write one.")
        lines.append("- *This demo answer is not added to the conversation.*")
        await cl.Message(content="\n".join(lines), parent_id=message.id or None).send()

    async def fault_demo(self, text: str) -> None:
        """The connection is cut after a few tokens, on our side, with any provider."""
        question = text.strip() or FAULT_DEMO_PROMPT
        source = DroppingSource(self.chat.source, after=FAULT_AFTER_TOKENS)
        result = await self.answer(question, source=source)
        stats = result.stats
        if stats.resumes:
            story = (
                f"The connection was cut after {FAULT_AFTER_TOKENS} tokens. The app asked the "
                f"model to continue from the text already shown, removed the words it repeated "
                f"at the seam, and finished the answer: {stats.attempts} requests, "
                f"{stats.resumes} resume."
            )
        else:
            story = (
                f"The connection was cut after {FAULT_AFTER_TOKENS} tokens. Resume is off "
                "(STREAM_RESUMES=0), so the answer is marked interrupted: press Continue."
            )
        await cl.Message(content=f"**{label('fault_demo', self.language)}**: {story}").send()

    async def agent_demo(self, text: str) -> None:
        """A question an agent answers with a tool: its step as usual, then each raw chunk of
        the tool call beside what the step showed after it (the offline model calls tools)."""
        words = AGENT_DEMO_TEXT.get(self.language, AGENT_DEMO_TEXT["en"])
        if self.runtime is None:
            await self.show_error("The agent demo needs the app's provider, which is not ready.")
            return
        question = text.strip() or AGENT_DEMO_PROMPT
        chunks = ChunkLog()
        raw: list[str] = []

        def tap(chunk: str) -> None:
            raw.append(chunk)
            chunks(Delta(_chunk_text(chunk), index=len(raw) - 1, raw=chunk))

        steps = ToolSteps()
        message = cl.Message(content="")
        sink = self._paced(self.make_sink(message))
        if await self.chat.pipeline.screen(question, sink, self.chat.guardrail_config) is not None:
            return  # refused by the input checks before anything went upstream
        async with tapped_client(self.runtime.provider.client, tap) as client:
            source = agent_source(self.runtime, self.chat.guardrail_config, steps, client=client)
            run = self.chat.new_run(sink, source=source)
            run.resilience = agent_resilience(run.resilience)
            try:
                result = await run.run(self.chat.request_for(question))
            finally:
                await steps.close()
        await self._views(message, chunks, result)
        rows = tool_call_rows(raw)
        lines = [f"**{words['title']}**", ""]
        if rows:
            lines += [
                words["intro"],
                "",
                f"| {words['chunk']} | {words['piece']} | {words['step']} |",
                "|---:|---|---|",
                *(
                    f"| {number} | {_cell(piece)} | {_cell(shown)} |"
                    for number, piece, shown in rows
                ),
            ]
        else:
            lines.append(words["none"])
        lines += ["", words["note"]]
        await cl.Message(content="\n".join(lines), parent_id=message.id or None).send()


def tool_call_rows(raw_chunks: list[str]) -> list[tuple[int, str, str]]:
    """For each raw chunk carrying tool-call pieces: its number (from 1), the piece, and the
    arguments its call has shown so far (`name(...)`), as the step shows them."""
    rows: list[tuple[int, str, str]] = []
    names: dict[int, str] = {}
    so_far: dict[int, str] = {}
    for number, chunk in enumerate(raw_chunks, start=1):
        try:
            choices = json.loads(chunk).get("choices") or []
        except (ValueError, AttributeError):
            continue
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            for call in (delta or {}).get("tool_calls") or ():
                index = int(call.get("index", 0))
                function = call.get("function") or {}
                if function.get("name"):
                    names[index] = function["name"]
                piece = function.get("arguments") or ""
                so_far[index] = so_far.get(index, "") + piece
                shown = f"{names.get(index, '?')}({so_far[index]})"
                rows.append((number, piece if piece else f"({names.get(index, '?')})", shown))
    return rows


def _chunk_text(chunk: str) -> str:
    """The answer text a raw chunk carries (none for a tool call's chunks)."""
    try:
        choices = json.loads(chunk).get("choices") or []
        return "".join(str((c.get("delta") or {}).get("content") or "") for c in choices)
    except (ValueError, AttributeError, TypeError):
        return ""


def _cell(text: str) -> str:
    """Text in a Markdown table cell: as code, with pipes and backticks that cannot break it."""
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else ""


class _Headed:
    """Puts `heading` above the answer in `inner` (a side-by-side lane's name), whatever is
    written, retracted or finished."""

    def __init__(self, inner: Sink, heading: str) -> None:
        self.inner = inner
        self.heading = heading
        self._headed = False

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, text: str) -> None:
        if text and not self._headed:
            self._headed, text = True, self.heading + text
        await self.inner.write(text)

    async def replace(self, text: str) -> None:
        self._headed = True
        await self.inner.replace(self.heading + text)

    async def finish(self, result: StreamResult) -> None:
        await self.inner.finish(replace(result, text=self.heading + result.text))
