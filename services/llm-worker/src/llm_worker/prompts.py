"""System prompts per chat type: configuration, not code.

The built-in prompts live in ``prompts/*.md`` beside this module; ``PROMPTS_DIR`` points at a folder
with ``documents.md`` and/or ``messages.md`` that replace them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from chat_common.frames import CHAT_TYPES, ChatType
from chat_common.settings import LLMSettings


def load_prompts(settings: LLMSettings) -> dict[ChatType, str]:
    prompts: dict[ChatType, str] = {}
    override = Path(settings.prompts_dir) if settings.prompts_dir else None
    for chat_type in CHAT_TYPES:
        custom = override / f"{chat_type}.md" if override else None
        if custom is not None and custom.is_file():
            prompts[chat_type] = custom.read_text(encoding="utf-8").strip()
        else:
            prompts[chat_type] = (
                resources.files("llm_worker").joinpath("prompts", f"{chat_type}.md").read_text(encoding="utf-8").strip()
            )
    return prompts
