"""The chat settings panel (Chainlit input widgets) for one chat's options: model, temperature,
system prompt, language, stats line, thinking, guardrails."""

from __future__ import annotations

from chainlit.input_widget import Select, Slider, Switch, TextInput

from streamchat.chat import ChatOptions
from streamchat.languages import LANGUAGES
from streamchat.pipeline import GuardrailPanel


def settings_widgets(
    options: ChatOptions, models: list[str], guardrails: GuardrailPanel
) -> list[object]:
    """The widgets, set to `options`; a model picker when the provider lists its models."""
    model_widget: object
    if models:
        values = [options.model, *models] if options.model not in models else models
        values = [value for value in values if value]
        model_widget = Select(
            id="model", label="Model", values=values, initial_value=options.model or values[0]
        )
    else:
        model_widget = TextInput(
            id="model", label="Model", initial=options.model, placeholder="model name"
        )
    return [
        model_widget,
        Slider(
            id="temperature",
            label="Temperature",
            initial=options.temperature,
            min=0,
            max=2,
            step=0.1,
        ),
        TextInput(
            id="system_prompt",
            label="System prompt",
            initial=options.system_prompt,
            multiline=True,
        ),
        Select(
            id="language",
            label="Language / Zabaan",
            items={name: code for code, name in LANGUAGES.items()},
            initial_value=options.language,
            description="The language answers (and the offline model's lessons) come in.",
        ),
        Switch(
            id="show_metrics",
            label="Show stats under each answer (time to first token, tokens, tokens/s)",
            initial=options.show_metrics,
        ),
        Switch(
            id="show_reasoning",
            label="Show a reasoning model's thinking (in a step above the answer)",
            initial=options.show_reasoning,
        ),
        Switch(
            id="guardrails_on",
            label=f"Guardrails ({', '.join(guardrails.policies) or 'none configured'})",
            initial=options.guardrails_on and guardrails.enabled,
            disabled=guardrails.locked or not guardrails.enabled,
            description=guardrails.note,
        ),
        Select(
            id="guardrail_mode",
            label="Guardrail mode",
            items={
                "hold: text appears once it is checked (a short delay)": "hold",
                "buffered: text appears at once, retracted on a violation": "buffered",
            },
            initial_value=options.guardrail_mode,
            disabled=guardrails.locked or not guardrails.enabled,
        ),
    ]
