"""Chat-formatted students (``data.chat_template``): examples rendered through the student tokenizer's own chat
template, so an instruct checkpoint is trained and evaluated in the layout it was tuned on.

A training example is the conversation [user: prompt, assistant: target]; evaluation renders [user: prompt] with
the generation prompt (the assistant's header). Both are split at the same place: the prompt ids of a training
example are the rendered generation prompt, checked to be the start of the rendered conversation, so training
and evaluation see exactly the same prompt ids. The target ids are the assistant's text and the template's end-
of-turn token (Qwen's ``<|im_end|>``, Gemma's ``<end_of_turn>``): the student learns to close its turn, and
generation stops there. What a template puts after that token (a newline before the next turn) is never
generated, so it is left out; the template's tokens before the assistant's text are prompt and carry no loss.

Rendered text already holds the template's own special tokens (Llama's and Gemma's BOS), so it is encoded
without the tokenizer adding more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cotdistill.errors import ConfigError

Ids = list[int]
# Stands in for a message's text to find where the template puts it; no template writes it itself.
SENTINEL = "cotdistillSENTINEL7f3a"


def _name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (instruct checkpoints do; base ones and T5 do not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def check_chat_student(tokenizer: Any, causal: bool, key: str = "data.chat_template") -> None:
    """Refuse a chat layout the student cannot have: a seq2seq student (T5 has no chat template) or a tokenizer
    without a chat template. ``key`` names the setting that asked for it."""
    if not causal:
        raise ConfigError(f"{key} is true but {_name(tokenizer)!r} is a seq2seq student: chat templates are for "
                          f"decoder-only instruct checkpoints; set {key}=false")
    if not has_chat_template(tokenizer):
        raise ConfigError(f"{key} is true but the tokenizer of {_name(tokenizer)!r} has no chat template (an "
                          "instruct checkpoint's tokenizer_config.json or chat_template.jinja holds one); use an "
                          f"instruct checkpoint or set {key}=false")


def _render(tokenizer: Any, prompt: str, target: str | None = None) -> str:
    """The template's text of [user: prompt] with the generation prompt, or of [user: prompt, assistant: target]."""
    messages = [{"role": "user", "content": prompt}]
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=target is None)
    except Exception as err:  # a template may raise anything (jinja errors, its own raise_exception)
        raise ConfigError(f"the chat template of {_name(tokenizer)!r} cannot render a user/assistant "
                          f"conversation: {err}") from err


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []


def _special_ids(tokenizer: Any) -> set[int]:
    """Named special tokens and every added token marked special (Llama 3's <|eot_id|> is only the latter)."""
    found = set(tokenizer.all_special_ids)
    found.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items()
                 if getattr(token, "special", False))
    return found


def end_of_turn_id(tokenizer: Any) -> int:
    """The special id the template closes the assistant's turn with: where a chat student stops generating."""
    check_chat_student(tokenizer, causal=True)
    text = _render(tokenizer, "1", SENTINEL)
    if SENTINEL not in text:
        raise ConfigError(f"the chat template of {_name(tokenizer)!r} drops the assistant's text")
    (after,) = _encode(tokenizer, [text[text.rindex(SENTINEL) + len(SENTINEL):]])
    special = _special_ids(tokenizer)
    found = next((i for i in after if i in special), None)
    if found is None:
        raise ConfigError(f"the chat template of {_name(tokenizer)!r} closes the assistant's turn with no special "
                          "token, so a chat student could not tell where its answer ends")
    return found


def chat_head_ids(tokenizer: Any) -> list[int]:
    """The ids every rendered prompt starts with, before the user's text (BOS, a system turn, the user header):
    kept when a long prompt loses its start, as a plain causal prompt keeps its BOS."""
    check_chat_student(tokenizer, causal=True)
    text = _render(tokenizer, SENTINEL)
    if SENTINEL not in text:
        raise ConfigError(f"the chat template of {_name(tokenizer)!r} drops the user's text")
    (head,) = _encode(tokenizer, [text[:text.index(SENTINEL)]])
    return head


def _split_head(tokenizer: Any, head: list[int], prompts: list[list[int]]) -> list[list[int]]:
    """Each rendered prompt's ids after the shared head (checked to be there)."""
    for ids in prompts:
        if ids[:len(head)] != head:
            raise ConfigError(f"the chat template of {_name(tokenizer)!r} does not start every prompt with the same "
                              "tokens before the user's text, so a long prompt cannot be shortened safely")
    return [ids[len(head):] for ids in prompts]


def chat_prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """(head ids, each prompt's ids after the head): each prompt rendered as the user turn followed by the
    assistant's header (``add_generation_prompt``), what a chat student generates its answer after."""
    head = chat_head_ids(tokenizer)
    return head, _split_head(tokenizer, head, _encode(tokenizer, [_render(tokenizer, p) for p in prompts]))


def render_chats(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[list[int], list[tuple[list[int], Ids]]]:
    """(head ids, (prompt ids after the head, target ids) per pair): the user/assistant conversation split at the
    assistant's text; the target ends with the template's end-of-turn token (what follows it is dropped).

    The prompt ids are exactly `chat_prompt_ids`' for the same prompt; a template (or tokenizer) for which the
    rendered generation prompt is not the start of the rendered conversation is refused, naming the tokenizer.
    """
    end = end_of_turn_id(tokenizer)
    head, prompts = chat_prompt_ids(tokenizer, [p for p, _ in pairs])
    fulls = _split_head(tokenizer, head, _encode(tokenizer, [_render(tokenizer, p, t) for p, t in pairs]))
    out = []
    for prompt, full in zip(prompts, fulls, strict=True):
        if full[:len(prompt)] != prompt:
            raise ConfigError(f"the chat template of {_name(tokenizer)!r} does not render a conversation as its "
                              "prompt with the generation prompt followed by the assistant's turn, so training and "
                              "evaluation would see different prompts; set data.chat_template=false")
        rest = full[len(prompt):]
        if end not in rest:
            raise ConfigError(f"the chat template of {_name(tokenizer)!r} does not end the assistant's turn with "
                              f"token {end}")
        out.append((prompt, rest[:len(rest) - rest[::-1].index(end)]))
    return head, out


def render_chat(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of one example as a chat student sees it (see `render_chats`)."""
    head, ((prompt_ids, target_ids),) = render_chats(tokenizer, [(prompt, target)])
    return head + prompt_ids, target_ids
