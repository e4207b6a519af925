"""The process-wide pieces behind every chat: settings, the provider, the offline demo model.

Front ends build one Runtime at start-up (never at import), start it, and close it at
shutdown. A bad setting does not crash the process: the Runtime keeps the ConfigError so the
UI can show it to whoever opens the page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from streamchat.chat import ChatOptions, ChatSession
from streamchat.core.errors import ConfigError, ProviderError
from streamchat.core.metrics import PROCESS_METRICS
from streamchat.core.provider import Provider
from streamchat.core.relay import Resilience
from streamchat.core.sharing import SharedAnswers
from streamchat.guardrails.moderation import Moderator, OpenAIModerationClient
from streamchat.hosting.answer_cache import RedisAnswerCache
from streamchat.hosting.limits import RateLimiter
from streamchat.hosting.shared_streams import RedisSharedStreams
from streamchat.offline import OfflineServer
from streamchat.pipeline import Pipeline, check_guardrail_files
from streamchat.settings import Settings, public_url

log = logging.getLogger("streamchat.runtime")

# How long chat start may wait for the model list before showing the settings without it.
MODEL_LIST_TIMEOUT_S = 5.0


class Service(Protocol):
    """Something a face runs beside the chats (the SSE endpoint's answers): started and closed
    with the Runtime."""

    async def start_background(self) -> None: ...

    async def aclose(self) -> None: ...


class Runtime:
    """Settings + provider (+ the offline server when no provider is configured)."""

    def __init__(self, settings: Settings) -> None:
        # A blocklist or pattern file that cannot be used is a configuration error, shown
        # when the page opens, not a failure of every answer.
        check_guardrail_files(settings.guardrails)
        self.settings = settings
        self.offline_server: OfflineServer | None = None
        self._provider: Provider | None = None
        self.moderator: Moderator | None = None  # the moderation policy, when configured
        # Per-user limits, in this process or in Redis; None when no limit is set.
        self.limiter = RateLimiter(settings.rate_limits) if settings.rate_limits.enabled else None
        self._services: list[Service] = []
        # Identical questions share one upstream answer; complete answers may be replayed.
        # With Redis, complete answers are kept there too, for every replica, and a live
        # answer is led by one replica and followed by the others.
        redis_url = settings.rate_limits.redis_url
        self.answer_store = (
            RedisAnswerCache(redis_url, settings.answer_cache_ttl_s)
            if redis_url and settings.answer_cache_ttl_s > 0
            else None
        )
        self.live_store = (
            RedisSharedStreams(redis_url)
            if redis_url and settings.shared_answers != "off"
            else None
        )
        self.sharing = SharedAnswers.configured(
            settings.shared_answers,
            settings.answer_cache_ttl_s,
            settings.answer_cache_max_mb,
            login=settings.login,
            remote=self.answer_store,
            live_remote=self.live_store,
        )

    def attach(self, service: Service) -> None:
        """Start `service` with this Runtime and close it at shutdown. Call before start()."""
        if self._provider is not None:
            raise RuntimeError("attach() after Runtime.start()")
        self._services.append(service)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Runtime:
        return cls(Settings.from_env(environ))

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            raise RuntimeError("Runtime.start() has not been called")
        return self._provider

    async def start(self) -> None:
        """Start the offline demo model if needed and build the provider."""
        base_url = self.settings.base_url
        if self.settings.offline:
            server = OfflineServer(
                tokens_per_second=self.settings.offline_tps,
                first_token_delay_ms=self.settings.offline_ttft_ms,
                default_fault=self.settings.offline_fault,
                quiet=self.settings.speedups,
            )
            # start() blocks until the server accepts connections; keep the loop free meanwhile.
            base_url = await asyncio.to_thread(server.start)
            self.offline_server = server
            log.info("offline demo model listening at %s", base_url)
        settings = self.settings
        self._provider = Provider(
            api_key=settings.api_key,
            base_url=base_url,
            model=settings.model,
            request_timeout_s=settings.request_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            http_stack=settings.http_client,
            read_pacing=settings.read_pacing,
            speedups=settings.speedups,
            offline=settings.offline,
        )
        for service in self._services:
            await service.start_background()
        log.info("answers come from %s", self._provider.label)
        guardrails = self.settings.guardrails
        if guardrails.moderated:
            # Offline, the demo model's stand-in endpoint judges the answers.
            moderation_url = guardrails.moderation_base_url or base_url
            assert moderation_url is not None
            self.moderator = Moderator(
                OpenAIModerationClient(
                    base_url=moderation_url,
                    api_key=guardrails.moderation_api_key,
                    model=guardrails.moderation_model,
                    timeout_s=guardrails.moderation_timeout_s,
                ),
                on_error=guardrails.on_error,
                timeout_s=guardrails.moderation_timeout_s,
                on_check_error=lambda policy: PROCESS_METRICS.guardrail_check_errors.labels(
                    policy=policy
                ).inc(),
            )
            log.info("moderation checks go to %s", public_url(moderation_url))

    async def aclose(self) -> None:
        for service in self._services:
            await service.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.answer_store is not None:
            await self.answer_store.aclose()
        if self.live_store is not None:
            await self.live_store.aclose()
        if self._provider is not None:
            await self._provider.aclose()
        if self.moderator is not None:
            await self.moderator.aclose()
        server = self.offline_server
        if server is not None:
            await asyncio.to_thread(server.stop)
            self.offline_server = None

    async def new_chat(self) -> tuple[ChatSession, ProviderError | None]:
        """A fresh chat with the configured defaults.

        The default model is looked up now so the settings panel can show it; if that fails,
        the chat still starts (the error is returned for the UI) and the provider tries again
        on the first message.
        """
        problem: ProviderError | None = None
        model = ""
        try:
            model = await asyncio.wait_for(
                self.provider.default_model(), timeout=MODEL_LIST_TIMEOUT_S
            )
        except ProviderError as exc:
            problem = exc
        except TimeoutError:
            log.warning("model list took longer than %s s", MODEL_LIST_TIMEOUT_S)
        options = ChatOptions(
            model=model,
            temperature=self.settings.temperature,
            system_prompt=self.settings.system_prompt,
            max_tokens=self.settings.max_tokens,
            show_metrics=self.settings.show_metrics,
            show_reasoning=self.settings.show_reasoning,
            guardrail_mode=self.settings.guardrails.mode,
            language=self.settings.language,
        )
        chat = ChatSession.on(
            self.pipeline(), options, max_history_tokens=self.settings.max_history_tokens
        )
        return chat, problem

    def pipeline(self) -> Pipeline:
        """What answers requests with the operator's settings: every face's runs come from it."""
        settings = self.settings
        return Pipeline(
            self.provider,
            guardrails=settings.guardrails,
            moderator=self.moderator,
            flush_interval_s=settings.stream_flush_ms / 1000,
            resilience=Resilience(
                retries=settings.retries,
                resumes=settings.stream_resumes,
                stall_s=settings.stream_stall_s,
                first_token_timeout_s=settings.first_token_timeout_s,
            ),
            max_input_chars=settings.max_input_chars,
            show_reasoning=settings.show_reasoning,
            sharing=self.sharing,
        )

    async def available_models(self) -> list[str]:
        """The provider's models for the settings picker; empty when it cannot say."""
        try:
            return await asyncio.wait_for(self.provider.list_models(), timeout=MODEL_LIST_TIMEOUT_S)
        except (ProviderError, TimeoutError):
            return []


def settings_or_error(
    environ: Mapping[str, str] | None = None,
) -> tuple[Runtime | None, ConfigError | None]:
    """Build a Runtime, or return the configuration problem to show instead."""
    try:
        return Runtime.from_env(environ), None
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return None, exc
