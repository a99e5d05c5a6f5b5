"""Helpers shared by the SFT tests (a module of its own: every test folder has a ``conftest``)."""

from __future__ import annotations

from pathlib import Path


def sft_config_text(sources: dict, tokenizer: Path, tasks: int = 2, extra: str = "") -> str:
    d = sources["dir"]
    return f"""
output = "out"
tokenizer = "{tokenizer}"
{extra}
[executor]
tasks = {tasks}

[[sources]]
name = "chat"
schema = "messages"
paths = ["{d / "messages.jsonl.zst"}"]

[[sources]]
name = "share"
schema = "sharegpt"
paths = ["{d / "sharegpt.jsonl.zst"}"]
roles = {{ bot = "assistant" }}

[[sources]]
name = "qa"
schema = "prompt_response"
paths = ["{d / "qa.jsonl.zst"}"]
prompt_field = "question"
response_field = "answer"
"""
