"""Chat templates: the tokenizer's own (Jinja, from ``tokenizer_config.json``) or ChatML.

ChatML is SmolLM2-Instruct's format: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then
``<|im_start|>assistant\\n`` as the generation prompt.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Checks an OpenAI ``messages`` list; raises ValueError naming the bad entry."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: expected a non-empty list of {role, content} objects")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}]: expected an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role: expected one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}].content: expected a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def chatml(messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def apply_chat_template(messages: Sequence[dict[str, str]], template: str | None = None, *,
                        add_generation_prompt: bool = True, **variables: Any) -> str:
    """Renders ``messages`` with a Jinja ``template`` (HF semantics) or, when None, ChatML."""
    messages = validate_messages(list(messages))
    if template is None:
        return chatml(messages, add_generation_prompt=add_generation_prompt)
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:  # pragma: no cover - jinja2 is a declared dependency
        raise RuntimeError("chat templates need jinja2 (pip install jinja2)") from error

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **variables)


def load_chat_template(model_dir: str | pathlib.Path) -> str | None:
    """``chat_template`` from ``tokenizer_config.json`` (or ``chat_template.jinja``) in ``model_dir``, else None."""
    model_dir = pathlib.Path(model_dir)
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            return named.get("default")
    return None


__all__ = ["ROLES", "apply_chat_template", "chatml", "load_chat_template", "validate_messages"]
