"""The baseline for benchmarks/load.py: a Chainlit app written the canonical way, calling
`stream_token` for every chunk the openai SDK yields. Not part of streamchat."""

import os

import chainlit as cl
from openai import AsyncOpenAI

client = AsyncOpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="not-needed")
MODEL = os.environ.get("OPENAI_MODEL", "bench")


@cl.on_chat_start
async def start() -> None:
    cl.user_session.set("history", [])


@cl.on_message
async def main(message: cl.Message) -> None:
    history = cl.user_session.get("history")
    history.append({"role": "user", "content": message.content})
    msg = cl.Message(content="")
    stream = await client.chat.completions.create(model=MODEL, messages=history, stream=True)
    async for chunk in stream:
        if chunk.choices and (token := chunk.choices[0].delta.content):
            await msg.stream_token(token)
    await msg.send()
    history.append({"role": "assistant", "content": msg.content})
