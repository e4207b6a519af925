"""The console face, run as a subprocess against the offline model: text on stdout, the stats
line on stderr, --no-stream, --raw, exit codes, and Ctrl+C closing the upstream."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.harness import REPO, closed_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OPENAI_") and k not in ("OFFLINE_FAULT",)
    }
    env.update({"OFFLINE_TPS": "400", "OFFLINE_TTFT_MS": "5", "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "streamchat", *args],
        cwd=REPO,
        env=env or cli_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_streams_the_answer_to_stdout_and_stats_to_stderr(offline_server):
    done = run_cli("What is a token?", env=cli_env(OPENAI_BASE_URL=offline_server.base_url))
    assert done.returncode == 0, done.stderr
    record = offline_server.records.last()
    assert done.stdout == choose_answer(record.messages) + "\n"
    assert "TTFT" in done.stderr and "tok/s" in done.stderr and "tokens" in done.stderr
    assert record.stream


def test_offline_default_answers_without_any_configuration():
    done = run_cli("What does stream=True do?")
    assert done.returncode == 0, done.stderr
    assert "offline demo model" in done.stdout.splitlines()[0].lower()


def test_no_stream_asks_without_streaming(offline_server):
    done = run_cli(
        "--no-stream", "What is SSE?", env=cli_env(OPENAI_BASE_URL=offline_server.base_url)
    )
    assert done.returncode == 0, done.stderr
    record = offline_server.records.last()
    assert not record.stream
    assert done.stdout == choose_answer(record.messages) + "\n"


def test_raw_prints_each_chunk_as_json(offline_server):
    done = run_cli(
        "--raw", "What is a token?", env=cli_env(OPENAI_BASE_URL=offline_server.base_url)
    )
    assert done.returncode == 0, done.stderr
    chunks = [json.loads(line) for line in done.stdout.splitlines()]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices")
    )
    assert text == choose_answer(offline_server.records.last().messages)


def test_interactive_mode_keeps_history(offline_server):
    done = run_cli(
        "-i",
        env=cli_env(OPENAI_BASE_URL=offline_server.base_url),
        stdin="What is a token?\nAnd backpressure?\n/quit\n",
    )
    assert done.returncode == 0, done.stderr
    last = offline_server.records.last()
    roles = [m["role"] for m in last.messages]
    assert roles == ["system", "user", "assistant", "user"]


def test_provider_error_exits_1_with_a_clear_message():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = run_cli("hi", env=cli_env(OPENAI_BASE_URL=url, STREAM_RETRIES="0"))
    assert done.returncode == 1
    assert "Could not reach the model provider" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_configuration_exits_2():
    done = run_cli("hi", env=cli_env(TEMPERATURE="hot"))
    assert done.returncode == 2
    assert "TEMPERATURE must be a number" in done.stderr


def test_missing_question_exits_2_with_usage_hint():
    done = run_cli(stdin="")
    assert done.returncode == 2
    assert "give a question" in done.stderr


def test_ctrl_c_stops_the_answer_and_closes_the_upstream():
    with OfflineServer(tokens_per_second=30, first_token_delay_ms=5) as slow:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamchat", "Explain buffering and backpressure"],
            cwd=REPO,
            env=cli_env(OPENAI_BASE_URL=slow.base_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            record = slow.records.wait_for(1, timeout=20)[0]
            # Past the guardrails' hold-back window, so some of the answer has been printed.
            wait_until(lambda: record.tokens_sent >= 50, within=20, what="50 tokens sent")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert record.ended.wait(1.0) and record.client_disconnected
        assert "Stopped by you" in err
        assert out and choose_answer(record.messages).startswith(out.rstrip("\n"))


def test_language_flag_answers_in_hinglish(offline_server):
    from streamchat.languages import HINGLISH_INSTRUCTION

    done = run_cli(
        "--language",
        "hinglish",
        "What is a token?",
        env=cli_env(OPENAI_BASE_URL=offline_server.base_url),
    )
    assert done.returncode == 0, done.stderr
    record = offline_server.records.last()
    assert HINGLISH_INSTRUCTION in record.messages[0]["content"]
    assert done.stdout == choose_answer(record.messages) + "\n"
    bad = run_cli("--language", "klingon", "hi")
    assert bad.returncode == 2 and "Unknown language" in bad.stderr


def test_no_stream_stats_measure_tokens_per_second_over_the_generation(offline_server):
    done = run_cli(
        "--no-stream", "What is a token?", env=cli_env(OPENAI_BASE_URL=offline_server.base_url)
    )
    assert done.returncode == 0, done.stderr
    speed = re.search(r"([\d.]+) tok/s", done.stderr)
    tokens = re.search(r"(\d+) tokens", done.stderr)
    seconds = re.search(r"· ([\d.]+) s", done.stderr)
    assert speed and tokens and seconds, done.stderr
    # Over the whole time, not the instant between the first and the last character.
    assert float(speed.group(1)) <= int(tokens.group(1)) / float(seconds.group(1)) * 1.1


def test_a_refused_connection_is_logged_as_refused_not_as_a_timeout():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = run_cli("hi", env=cli_env(OPENAI_BASE_URL=url, STREAM_RETRIES="0", LOG_LEVEL="DEBUG"))
    assert done.returncode == 1
    assert "ConnectionRefusedError" in done.stderr
    assert "Request timed out" not in done.stderr


def test_ctrl_c_at_an_empty_prompt_ends_the_line_before_leaving():
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamchat", "-i"],
        cwd=REPO,
        env=cli_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        seen = bytearray()

        def prompted() -> bool:
            seen.extend(proc.stderr.read() or b"")
            return seen.endswith(b"> ")

        wait_until(prompted, within=30, what="the > prompt")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        os.set_blocking(proc.stderr.fileno(), True)
        seen.extend(proc.stderr.read())
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert seen.endswith(b"> \n"), bytes(seen[-40:])
