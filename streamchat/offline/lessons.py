"""What the offline demo model says: scripted lessons about streaming, chosen by relevance.

`choose_answer(messages)` is pure and deterministic, so tests can compare what was streamed with
what was intended. It also writes guardrail demos (an answer with a fake email, card number,
phone number, API key or blocked word in the middle) and continuations of a cut-off answer.
Everything it says comes in English and in Hinglish / Roman Urdu (lessons/hinglish/); the
language is read from the request (see streamchat/languages.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from streamchat.languages import DEFAULT_LANGUAGE, LANGUAGES, language_from_messages
from streamchat.offline.faults import strip_directives
from streamchat.offline.moderation import DEMO_PHRASE

DEMO_NOTICE = (
    "*This is streamchat's offline demo model: it streams scripted lessons about streaming, "
    "it is not an LLM. The app talks to it when no provider is configured, or when "
    "`OPENAI_BASE_URL` points at this demo server. For a real model, point `OPENAI_BASE_URL` "
    "at your provider (or leave it unset for OpenAI) and set `OPENAI_API_KEY`.*"
)

GUARDRAIL_DEMO_KINDS = ("moderation", "email", "card", "phone", "secret", "blocked_word")

# The fake values the guardrail demos stream: the same in every language.
_DEMO_VALUES = {
    "email": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "phone": "+1 415 555 0123",
    "secret": "sk-proj-Q7xLm2VbN9cR4tZ8wK1pJ6hD3fG5sA0eY2uI9oP4",
    "blocked_word": "darn",
    "moderation": f'"{DEMO_PHRASE}"',
}
_DEMO_TRIGGERS = {
    "moderation": ("moderation", "moderate", "harass", "toxic", "badtameez"),
    "email": ("email", "e-mail", "mail"),
    "card": ("card", "credit"),
    "phone": ("phone", "number to call", "mobile"),
    "secret": ("secret", "api key", "key", "token", "password"),
    "blocked_word": ("blocked", "blocklist", "word", "profanity", "swear", "gaali", "lafz"),
}


@dataclass(frozen=True)
class _Phrases:
    """Everything the model says outside its lessons, in one language."""

    notice: str
    greeting: str
    no_lesson: str
    topics_heading: str
    topics_examples: str
    # guardrail demos: `demo` is formatted with what (a description), value and extra
    demo: str
    demo_what: dict[str, str]
    demo_extra: dict[str, str]


_PHRASES = {
    "en": _Phrases(
        notice=DEMO_NOTICE,
        greeting=(
            "Hello! I am the offline demo model. I stream short, scripted lessons about how "
            "streaming LLM answers works, so you can see streaming without any API key."
        ),
        no_lesson=(
            "I am a scripted demo model, not an LLM, so I can only answer questions about "
            "streaming that I have a lesson for, and I did not find one for that question."
        ),
        topics_heading="I can talk about:",
        topics_examples=(
            "Try for example *What does stream=True do?*, *Why does time to first token "
            "matter?* or *Show me a guardrail demo with an email*. You can also add a fault to "
            "a question, such as `[fault: drop after=20]`, to watch the app recover from a "
            "broken stream."
        ),
        demo=(
            "Here is a guardrail demo with {what}. The answer streams normally at first, so you "
            "can see the text arrive token by token. Now comes the value: {value} is what a "
            "guardrail should catch, and the text after it is what you should never see when "
            "the guard stops the stream. In hold mode the value never reaches the screen; with "
            "redaction it is replaced by a label and the answer goes on.{extra} This sentence "
            "closes the demo, so a stopped answer is easy to tell from a complete one."
        ),
        demo_what={
            "email": "an email address",
            "card": "a credit card number",
            "phone": "a phone number",
            "secret": "an API key",
            "blocked_word": "a blocked word",
            "moderation": "text a moderation check flags",
        },
        demo_extra={
            "blocked_word": (
                " The list of blocked words is configurable; this demo uses a harmless stand-in."
            ),
            "moderation": (
                " Moderation judges whole sentences, so the answer is cut back to the start of "
                "the sentence that holds the value, and it always stops rather than redacts. It "
                "runs when GUARDRAILS includes moderation; offline, a demo endpoint flags a few "
                "fixed phrases, while OpenAI's model judges meaning."
            ),
        },
    ),
    "hinglish": _Phrases(
        notice=(
            "*Yeh streamchat ka offline demo model hai: yeh streaming ke baare mein scripted "
            "lessons stream karta hai, yeh LLM nahi hai. App isse tab baat karti hai jab koi "
            "provider configure nahi hai, ya jab `OPENAI_BASE_URL` isi demo server ki taraf "
            "hai. Asli model ke liye `OPENAI_BASE_URL` ko apne provider par set kijiye (OpenAI "
            "ke liye khaali chhodiye) aur `OPENAI_API_KEY` dijiye.*"
        ),
        greeting=(
            "Salaam, namaste! Main offline demo model hoon. Main chhote, scripted lessons stream "
            "karta hoon ke LLM ke jawab stream kaise hote hain, taake aap baghair kisi API key "
            "ke streaming dekh sakein."
        ),
        no_lesson=(
            "Main ek scripted demo model hoon, LLM nahi, is liye main streaming ke sirf unhi "
            "sawalon ka jawab de sakta hoon jin ka lesson mere paas hai, aur is sawal ke liye "
            "mujhe koi lesson nahi mila."
        ),
        topics_heading="Main in topics par baat kar sakta hoon:",
        topics_examples=(
            "Maslan poochhiye *stream=True kya karta hai?*, *Time to first token kyun ahem "
            "hai?* ya *Email ke saath guardrail demo dikhao*. Aap kisi sawal mein fault bhi "
            "jod sakte hain, jaise `[fault: drop after=20]`, aur dekhiye ke tooti hui stream "
            "ke baad app kaise sambhalti hai."
        ),
        demo=(
            "Yeh guardrail demo hai, jis mein {what} hai. Jawab shuru mein aam tarah stream "
            "hota hai, taake aap text ko token by token aate hue dekh sakein. Ab value aati "
            "hai: {value} woh cheez hai jise guardrail ko pakadna chahiye, aur uske baad ka "
            "text woh hai jo guard ke stream rokne par aapko kabhi nazar nahi aana chahiye. "
            "Hold mode mein value kabhi screen tak nahi pahunchti; redaction mein use ek label "
            "se badal diya jaata hai aur jawab aage chalta hai.{extra} Yeh sentence demo ko "
            "khatam karta hai, taake ruka hua jawab poore jawab se aasani se alag pehchana ja "
            "sake."
        ),
        demo_what={
            "email": "ek email address",
            "card": "ek credit card number",
            "phone": "ek phone number",
            "secret": "ek API key",
            "blocked_word": "ek blocked word",
            "moderation": "aisa text jise moderation check flag karta hai",
        },
        demo_extra={
            "blocked_word": (
                " Blocked words ki list configurable hai; yeh demo asli gaali ki jagah ek "
                "be-zarar lafz istemaal karta hai."
            ),
            "moderation": (
                " Moderation poore sentences ko parakhta hai, is liye jawab us sentence ke "
                "shuru tak kaat diya jaata hai jis mein value hai, aur yeh redact karne ke "
                "bajaye hamesha rok deta hai. Yeh tab chalta hai jab GUARDRAILS mein moderation "
                "shamil ho; offline ek demo endpoint kuch fixed phrases ko flag karta hai, jab "
                "ke OpenAI ka model matlab ko parakhta hai."
            ),
        },
    ),
}

_GREETINGS = {
    *("hi", "hello", "hey", "hiya", "namaste", "salam", "assalamualaikum", "yo"),
    *("salaam", "assalam", "assalamu", "namaskar", "adaab"),
}
_CONTINUE = re.compile(
    r"\bcontinue\b|\bcut off\b|\bgo on\b|\bjaa?ri rakh|\baage (?:likh|bata)", re.IGNORECASE
)
_WORD = re.compile(r"[a-z0-9]+(?:[-=][a-z0-9]+)*")
_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "about",
        "tell",
        "explain",
        "please",
        "mean",
        "means",
        "work",
        "works",
    }
)
# Hinglish / Roman Urdu words that say nothing about the topic ("kya hai", "samjhao", "ke saath"),
# so "Backpressure kya hai?" is scored on "backpressure" alone. No English text contains them.
_HINGLISH_STOPWORDS = frozenset(
    {
        "kya", "kia", "hai", "hain", "hein", "hy", "ka", "ki", "ke", "ko", "se", "mein", "aur",
        "ya", "yeh", "ye", "woh", "wo", "kaise", "kaisa", "kaisi", "kyun", "kyu", "kyon",
        "kyunke", "kyunki", "kab", "kahan", "kaun", "kitna", "kitni", "kitne", "matlab",
        "samjhao", "samjhaiye", "samjhayein", "samjha", "batao", "bataiye", "bataen", "dikhao",
        "dikhaiye", "mujhe", "hamein", "humein", "nahi", "nahin", "hota", "hoti", "hote",
        "hoga", "karta", "karti", "karte", "karna", "karo", "karein", "kijiye", "kaam", "deta",
        "deti", "dete", "jata", "jati", "jate", "jaata", "jaati", "jaate", "raha", "rahi",
        "rahe", "sakta", "sakti", "sakte", "chahiye", "wala", "wali", "wale", "liye", "bhi",
        "toh", "par", "pe", "aap", "ap", "hum", "tum", "koi", "kuch", "ek", "us", "iska",
        "uska", "jab", "tab", "agar", "lekin", "magar", "sirf", "bas", "ab", "abhi", "zara",
        "thoda", "tha", "thi", "ahem", "zaroori", "bhai", "yaar", "ji", "sir", "plz",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Lesson:
    name: str
    title: str
    keywords: tuple[str, ...]
    body: str
    thinking: str = ""  # a reasoning model's scripted thinking before the answer, if any


def _stem(word: str) -> str:
    for suffix in ("ization", "isation", "ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> list[str]:
    return [
        _stem(w)
        for w in _WORD.findall(text.lower())
        if w not in _STOPWORDS and w not in _HINGLISH_STOPWORDS
    ]


@lru_cache(maxsize=len(LANGUAGES))
def lessons(language: str = DEFAULT_LANGUAGE) -> tuple[Lesson, ...]:
    """The lesson files shipped in streamchat/offline/lessons/ (English) or in its folder for
    the language (lessons/hinglish/), in name order."""
    if language not in LANGUAGES:
        raise ValueError(f"no lessons in {language!r}; languages: {', '.join(LANGUAGES)}")
    found = []
    folder = resources.files("streamchat.offline") / "lessons"
    if language != DEFAULT_LANGUAGE:
        folder = folder / language
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".md") or not entry.is_file():
            continue
        text = entry.read_text(encoding="utf-8")
        _, header, body = text.split("---\n", 2)
        fields = dict(line.split(":", 1) for line in header.strip().splitlines() if ":" in line)
        keywords = tuple(k.strip().lower() for k in fields["keywords"].split(",") if k.strip())
        found.append(
            Lesson(
                entry.name,
                fields["title"].strip(),
                keywords,
                body.strip(),
                fields.get("thinking", "").strip(),
            )
        )
    return tuple(found)


@lru_cache(maxsize=len(LANGUAGES))
def _index(language: str) -> tuple[list[Counter[str]], dict[str, float]]:
    documents = [
        Counter(_terms(" ".join((lesson.title, *lesson.keywords, lesson.body))))
        for lesson in lessons(language)
    ]
    count = len(documents)
    document_frequency: Counter[str] = Counter()
    for terms in documents:
        document_frequency.update(set(terms))
    idf = {term: math.log((1 + count) / (1 + df)) + 1 for term, df in document_frequency.items()}
    return documents, idf


def _score(
    lesson: Lesson, document: Counter[str], terms: set[str], lowered: str, idf: dict[str, float]
) -> float:
    # Whole keyword phrases ("time to first token", "stream=true") count most.
    score = sum(4.0 for keyword in lesson.keywords if keyword in lowered and " " in keyword)
    keyword_terms = {_stem(k) for k in lesson.keywords if " " not in k}
    title_terms = set(_terms(lesson.title))
    for term in terms:
        weight = idf.get(term, 0.0)
        if term in keyword_terms:
            score += 3.0 * weight
        if term in title_terms:
            score += 2.0 * weight
        score += weight * math.log1p(document.get(term, 0)) * 0.5
    return score


# A lesson scoring below this does not answer the question.
_RELEVANT = 2.0


def matching_lessons(
    question: str, language: str = DEFAULT_LANGUAGE, limit: int = 3
) -> list[Lesson]:
    """Up to `limit` lessons in `language` that match `question`, the most relevant first
    (ties keep the lessons' order); empty when none matches well enough."""
    lowered = question.lower()
    terms = set(_terms(question))
    documents, idf = _index(language)
    scored = [
        (score, position)
        for position, lesson in enumerate(lessons(language))
        if (score := _score(lesson, documents[position], terms, lowered, idf)) >= _RELEVANT
    ]
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    return [lessons(language)[position] for _, position in scored[:limit]]


def best_lesson(question: str, language: str = DEFAULT_LANGUAGE) -> Lesson | None:
    """The most relevant lesson in `language`, or None when nothing matches well enough.

    Hinglish lessons keep the English keywords, so an English question in a Hinglish chat
    finds its lesson too."""
    found = matching_lessons(question, language, limit=1)
    return found[0] if found else None


def demo_notice(language: str = DEFAULT_LANGUAGE) -> str:
    """The line that opens a conversation's first answer: this is a demo model, not an LLM."""
    return _PHRASES[language].notice


def topics_answer(intro: str, language: str = DEFAULT_LANGUAGE) -> str:
    phrases = _PHRASES[language]
    topics = "\n".join(f"- **{lesson.title}**" for lesson in lessons(language))
    return f"{intro}\n\n{phrases.topics_heading}\n\n{topics}\n\n{phrases.topics_examples}"


def _demo_kind(question: str) -> str | None:
    lowered = question.lower()
    if "demo" not in lowered and "demonstrat" not in lowered:
        return None
    for kind in GUARDRAIL_DEMO_KINDS:
        if any(trigger in lowered for trigger in _DEMO_TRIGGERS[kind]):
            return kind
    return "email" if "guardrail" in lowered else None


def guardrail_demo(kind: str, language: str = DEFAULT_LANGUAGE) -> str:
    phrases = _PHRASES[language]
    return phrases.demo.format(
        what=phrases.demo_what[kind],
        value=_DEMO_VALUES[kind],
        extra=phrases.demo_extra.get(kind, ""),
    )


def _answer_to(question: str, language: str) -> str:
    phrases = _PHRASES[language]
    cleaned = strip_directives(question)
    words = _WORD.findall(cleaned.lower())
    if words and len(words) <= 3 and words[0] in _GREETINGS:
        return topics_answer(phrases.greeting, language)
    kind = _demo_kind(cleaned)
    if kind is not None:
        return guardrail_demo(kind, language)
    lesson = best_lesson(cleaned, language)
    if lesson is None:
        return topics_answer(phrases.no_lesson, language)
    return f"## {lesson.title}\n\n{lesson.body}"


# Above this temperature the demo model tells its lesson the short way, so two answers at
# different temperatures (the classroom's side by side) differ visibly, as a real model's would.
WARM_TEMPERATURE = 1.0
_WARM_NOTES = {
    "en": (
        "*At temperature {t:g} a real model picks less likely words, so its wording changes "
        "from run to run. This scripted demo model shows the difference by telling the lesson "
        "the short way.*"
    ),
    "hinglish": (
        "*Temperature {t:g} par asli model kam mumkin alfaaz bhi chunta hai, is liye har baar "
        "uski wording badal jaati hai. Yeh scripted demo model yeh farq lesson ko chhota karke "
        "dikhata hai.*"
    ),
}


def _told_warm(answer: str, temperature: float, language: str) -> str:
    """The short telling: a note on temperature, the heading and the first paragraph."""
    parts = answer.split("\n\n")
    kept = parts[:2] if parts and parts[0].startswith("#") else parts[:1]
    return "\n\n".join([_WARM_NOTES[language].format(t=temperature), *kept])


def _fresh_answer(messages: list[dict[str, object]], temperature: float | None = None) -> str:
    """The answer to the conversation as it stands (its last user message), in the language
    the conversation asks for (told the short way above WARM_TEMPERATURE)."""
    language = language_from_messages(messages)
    question = ""
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            question = str(message["content"])
            break
    answer = _answer_to(question, language)
    if temperature is not None and temperature > WARM_TEMPERATURE:
        answer = _told_warm(answer, temperature, language)
    first = not any(m.get("role") == "assistant" for m in messages)
    return f"{demo_notice(language)}\n\n{answer}" if first else answer


def _continuation(
    messages: list[dict[str, object]], temperature: float | None = None
) -> str | None:
    """When asked to continue a cut-off answer: the rest of it, starting (as real models do)
    by repeating its last few words. None when the request is not a continuation."""
    if not messages:
        return None
    last = messages[-1]
    if last.get("role") == "assistant":
        partial, earlier = str(last.get("content") or ""), messages[:-1]
    elif (
        last.get("role") == "user"
        and _CONTINUE.search(str(last.get("content") or ""))
        and len(messages) >= 2
        and messages[-2].get("role") == "assistant"
    ):
        partial, earlier = str(messages[-2].get("content") or ""), messages[:-2]
    else:
        return None
    intended = _fresh_answer(earlier, temperature)
    shared = len(partial) if intended.startswith(partial) else _common_prefix(intended, partial)
    if shared == 0 or shared >= len(intended):
        return None  # unrelated, or already complete: answer the message afresh
    # Repeat the last three words of what was shown, the way models restate where they were.
    start = shared
    for _ in range(3):
        start = intended.rfind(" ", 0, max(start, 0))
        if start <= 0:
            start = 0
            break
    return intended[start:]


_GENERIC_THINKING = {
    "en": "The question is: {q}. I should find the lesson that answers it and tell it plainly.",
    "hinglish": "Sawal hai: {q}. Mujhe woh lesson dhoondna hai jo iska jawab de.",
}


def choose_thinking(messages: list[dict[str, object]], *, asked: bool = False) -> str:
    """What the offline model thinks before its answer: the scripted thinking of the lesson
    it answers with, or (when the request `asked` for thinking) a generic line about the
    question. Empty for a continuation and for lessons that do not think."""
    if _continuation(messages) is not None:
        return ""
    language = language_from_messages(messages)
    question = ""
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            question = strip_directives(str(message["content"]))
            break
    lesson = best_lesson(question, language) if question else None
    if lesson is not None and lesson.thinking:
        return lesson.thinking
    if asked and question:
        return _GENERIC_THINKING[language].format(q=question[:200])
    return ""


def _common_prefix(a: str, b: str) -> int:
    size = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        size += 1
    return size


def choose_answer(messages: list[dict[str, object]], temperature: object = None) -> str:
    """The text the offline model streams for these request messages at this temperature."""
    warmth = float(temperature) if isinstance(temperature, int | float) else None
    continuation = _continuation(messages, warmth)
    if continuation is not None:
        return continuation
    return _fresh_answer(messages, warmth)
