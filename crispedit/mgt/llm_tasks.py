"""Task prediction for `crispedit edit`: which of the model's task categories an instruction is.

Emu Edit predicts the task of an instruction with a language model before editing. Here the
project's LLM client (crispedit/models/llm.py: any OpenAI-compatible endpoint, structured output,
cache, retries) answers with a pydantic model whose `task` is a Literal of the checkpoint's
task vocabulary, so an answer outside it is rejected and retried by the client, never guessed.
Imported lazily: nothing here loads unless an endpoint is configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

SYSTEM = (
    "You sort image-editing instructions into task categories. Read the instruction and answer "
    "with the one category that best describes the edit it asks for."
)


def task_answer_model(vocabulary: tuple[str, ...]) -> type[BaseModel]:
    """A pydantic model {"task": one of the vocabulary} for the structured answer."""
    if not vocabulary:
        raise ValueError("the model has no task vocabulary")
    choice = Literal[vocabulary]  # type: ignore[valid-type]
    return create_model("EditTask", task=(choice, Field(description="the task category of the instruction")))


def task_request_messages(instruction: str, vocabulary: tuple[str, ...]) -> list[dict[str, Any]]:
    categories = ", ".join(vocabulary)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Categories: {categories}\nInstruction: {instruction}\nWhich category?"},
    ]


def predict_tasks(instructions: list[str], vocabulary: tuple[str, ...], settings: Any, cache_dir: str | Path
                  ) -> list[tuple[str | None, str | None]]:
    """(task, error) per instruction, through the project's LLM client; task None when it failed."""
    from crispedit.models.llm import LLMClient, LLMRequest

    answer = task_answer_model(vocabulary)
    client = LLMClient(settings, Path(cache_dir), "edit-task")
    requests = [LLMRequest(messages=task_request_messages(i, vocabulary), schema=answer) for i in instructions]
    out = []
    for result in client.ask_many(requests):
        value = getattr(result, "value", None)
        out.append((value.task, None) if value is not None else (None, str(getattr(result, "error", "no answer"))))
    return out


def llm_settings(base_url: str, model: str, api_key_env: str | None = None) -> Any:
    """LLMSettings from the CLI flags. The key itself is read from the named variable by the
    client; unset means LLMSettings' default variable, "none" a keyless local server."""
    from crispedit.models.llm import LLMSettings

    fields: dict[str, Any] = {"base_url": base_url, "model": model}
    if api_key_env:
        fields["api_key_env"] = None if api_key_env.lower() == "none" else api_key_env
    return LLMSettings(**fields)
