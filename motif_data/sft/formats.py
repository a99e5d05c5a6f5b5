"""One record of an SFT source → a ChatML conversation (``[{role, content}]``), per the source's schema and role
mapping; a record that cannot become one raises ``ChatError`` with the reason a build counts it under."""

from __future__ import annotations

import unicodedata

from motif_data.sft.config import SftSourceConfig
from motif_data.tokenizer.chat import ROLES, ChatError

__all__ = ["to_messages", "to_pair"]


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ChatError("missing_text", f"{what} is {type(value).__name__}, not a string")
    # the tokenizer learned its Korean merges on NFC text, as the corpus build encodes it
    return unicodedata.normalize("NFC", value)


def _messages(source: SftSourceConfig, turns, column: str) -> list[dict[str, str]]:
    column, role_key, content_key = (column, *source.keys[1:])
    if not isinstance(turns, list) or not turns:
        raise ChatError("missing_messages", f"{column} is not a non-empty list")
    mapping, messages = source.role_map, []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ChatError("malformed_message", f"{column}[{i}] is not a table")
        role = turn.get(role_key)
        role = mapping.get(role, role)
        if role not in ROLES:
            raise ChatError(
                "unknown_role", f"{column}[{i}]: role {turn.get(role_key)!r} maps to no ChatML role"
            )
        messages.append(
            {"role": role, "content": _text(turn.get(content_key), f"{column}[{i}].{content_key}")}
        )
    return messages


def _answer(source: SftSourceConfig, value, column: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        return _messages(source, value, column)
    return [{"role": "assistant", "content": _text(value, column)}]


def to_pair(source: SftSourceConfig, record: dict) -> tuple[list[dict[str, str]], dict, dict]:
    """(prompt messages, chosen answer, rejected answer) of a preference record: text answers after the prompt
    column (text: one user message, or a message list), or two message lists that differ in their last message."""
    chosen = _answer(source, record.get(source.chosen_field), source.chosen_field)
    rejected = _answer(source, record.get(source.rejected_field), source.rejected_field)
    if len(chosen) > 1 or len(rejected) > 1:
        if chosen[:-1] != rejected[:-1]:
            raise ChatError("prompt_mismatch", "chosen and rejected differ before their last message")
        prompt = chosen[:-1]
    else:
        value = record.get(source.prompt_field)
        if isinstance(value, list):
            prompt = _messages(source, value, source.prompt_field)
        else:
            prompt = [{"role": "user", "content": _text(value, source.prompt_field)}]
        if source.system is not None:
            prompt.insert(0, {"role": "system", "content": source.system})
    for answer in (chosen[-1], rejected[-1]):
        if answer["role"] != "assistant" or not answer["content"].strip():
            raise ChatError("no_assistant_text", "an answer is not an assistant message with text")
    if not prompt:
        raise ChatError("missing_messages", "no prompt before the answers")
    return prompt, chosen[-1], rejected[-1]


def to_messages(source: SftSourceConfig, record: dict) -> list[dict[str, str]]:
    """The conversation in ``record``; it must hold at least one assistant message with text."""
    if source.schema == "prompt_response":
        messages = [{"role": "system", "content": source.system}] if source.system is not None else []
        messages.append(
            {"role": "user", "content": _text(record.get(source.prompt_field), source.prompt_field)}
        )
        answer = _text(record.get(source.response_field), source.response_field)
        messages.append({"role": "assistant", "content": answer})
    else:
        messages = _messages(source, record.get(source.keys[0]), source.keys[0])
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ChatError("no_assistant_text", "no assistant message with text: nothing to train on")
    return messages
