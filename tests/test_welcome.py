"""The welcome screen names the app, says what it does and what answers, in both languages; the
offline model's notice never tells a user to set what is already set."""

from __future__ import annotations

from pathlib import Path

from streamchat.classroom.ui import AnswerSource, chat_profiles, welcome
from streamchat.languages import STARTERS, ui_language
from streamchat.offline.lessons import DEMO_NOTICE, choose_answer
from streamchat.settings import Settings


def test_chat_profile_welcome_names_the_app_and_the_offline_model_with_starters():
    source = AnswerSource.of(Settings.from_env(environ={}))
    chat, classroom, agent = chat_profiles(source, "en")
    assert chat.default and chat.icon and classroom.icon and agent.icon
    assert (classroom.name, agent.name) == ("Classroom", "Agent")
    assert "tool call" in (agent.markdown_description or "")
    assert "What is 17 * 23?" in [s.message for s in agent.starters or []]
    assert "streamchat" in (chat.markdown_description or "")
    assert "offline demo model" in (chat.markdown_description or "")
    assert [s.message for s in chat.starters or []] == list(STARTERS["en"])


def test_welcome_names_the_providers_model_without_the_key():
    settings = Settings.from_env(
        environ={
            "OPENAI_API_KEY": "sk-test-secret-value",
            "OPENAI_BASE_URL": "http://localhost:11434/v1",
            "OPENAI_MODEL": "llama3.2",
        }
    )
    text = welcome(AnswerSource.of(settings), "en")
    assert "**llama3.2**" in text and "localhost:11434" in text
    assert "offline" not in text and "sk-test" not in text


def test_welcome_and_starters_in_hinglish():
    chat, _, agent = chat_profiles(AnswerSource(offline=True), "hinglish")
    assert "Tools wala agent" in (agent.markdown_description or "")
    assert "Jawab" in (chat.markdown_description or "")
    assert [s.message for s in chat.starters or []] == list(STARTERS["hinglish"])


def test_welcome_language_follows_the_setting_then_the_browser():
    assert ui_language("hinglish", "en-US") == "hinglish"
    assert ui_language("en", "hi-Latn") == "hinglish"
    assert ui_language("en", "fr-FR") == "en"
    assert ui_language("en", None) == "en"


def test_offline_notice_does_not_ask_to_set_a_key_as_if_nothing_were_configured():
    first = choose_answer([{"role": "user", "content": "What is a token?"}])
    assert first.startswith(DEMO_NOTICE)
    assert "OPENAI_BASE_URL` points at this demo server" in DEMO_NOTICE
    assert "To connect a real model, set `OPENAI_API_KEY`" not in DEMO_NOTICE


def test_the_readme_calls_the_settings_button_what_it_looks_like():
    readme = (Path(__file__).resolve().parents[1] / "chainlit.md").read_text()
    assert "gear icon" in readme and "sliders icon" not in readme
