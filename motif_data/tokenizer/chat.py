"""ChatML for the extended tokenizer: the Jinja template the HF export carries, and the same rendering in plain
Python (ids and a per-token assistant mask) for builds, which need neither jinja nor transformers.

A conversation renders as ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``
with a generation prompt. The assistant mask marks each assistant message's content and its ``<|im_end|>``
(what a fine-tune learns to write, stop included), not its header and not the newline after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import accumulate

import tiktoken

__all__ = [
    "ROLES",
    "IM_START",
    "IM_END",
    "CHAT_TEMPLATE",
    "ChatError",
    "has_chat_tokens",
    "render_text",
    "render",
]

ROLES = ("system", "user", "assistant")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# HF renders this with trim_blocks/lstrip_blocks; written without whitespace outside tags so that nothing depends
# on them. `{% generation %}` marks what `apply_chat_template(..., return_assistant_tokens_mask=True)` reports.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_SPECIAL_LIKE = re.compile(r"<\|[^|<>\s]{1,64}\|>")


class ChatError(ValueError):
    """A conversation that cannot be rendered; ``reason`` is a short name a build counts it under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def has_chat_tokens(enc: tiktoken.Encoding) -> bool:
    return IM_START in enc.special_tokens_set and IM_END in enc.special_tokens_set


def _pairs(messages: Iterable[Mapping[str, str]], enc: tiktoken.Encoding) -> list[tuple[str, str]]:
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatError("unknown_role", f"message {i}: role {role!r} is not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise ChatError("bad_content", f"message {i}: content is {type(content).__name__}, not a string")
        # transformers would read a special's text inside content as that special; we would not: refuse it
        if "<|" in content and any(s in enc.special_tokens_set for s in _SPECIAL_LIKE.findall(content)):
            raise ChatError("special_token_in_text", f"message {i}: content holds a special token's text")
        out.append((role, content))
    return out


def render_text(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as the template writes it (no checks: the string dedup compares)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + f"{IM_START}assistant\n" if add_generation_prompt else text


def render(
    enc: tiktoken.Encoding, messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation, equal to ``apply_chat_template(messages, tokenize=True)`` of the
    exported tokenizer, and per token 1 where it belongs to an assistant message's content or ``<|im_end|>``.

    Raises ``ChatError`` for an unknown role, non-string content, or content holding a special token's text.
    """
    start, end = enc.encode_single_token(IM_START), enc.encode_single_token(IM_END)
    newline = enc.encode_ordinary("\n")
    ids: list[int] = []
    mask: list[int] = []
    for role, content in _pairs(messages, enc):
        # Like HF, which splits at specials first: "ROLE\nCONTENT" is one piece of text, so a token may join the
        # header's newline to the content's first characters.
        header = f"{role}\n"
        body = enc.encode_ordinary(header + content)
        ids.append(start)
        ids.extend(body)
        ids.append(end)
        ids.extend(newline)
        if role != "assistant":
            mask.extend([0] * (len(body) + 2 + len(newline)))
            continue
        head = enc.encode_ordinary(header)
        if body[: len(head)] == head:
            n_head = len(head)
        else:  # a token spans header and content: it holds content, so it counts as the assistant's
            n_bytes = len(header.encode())
            n_head = sum(1 for e in accumulate(map(len, enc.decode_tokens_bytes(body))) if e <= n_bytes)
        mask.append(0)
        mask.extend([0] * n_head + [1] * (len(body) - n_head))
        mask.append(1)
        mask.extend([0] * len(newline))
    if add_generation_prompt:
        prompt = [start, *enc.encode_ordinary("assistant\n")]
        ids.extend(prompt)
        mask.extend([0] * len(prompt))
    return ids, mask
