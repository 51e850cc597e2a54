"""Prompt styles for math problems, and rendering them through a tokenizer's chat template.

>>> build_messages("What is 2 + 3?", style="plain")
[{'role': 'user', 'content': 'What is 2 + 3?'}]
"""

from __future__ import annotations

BOXED = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

# Our own wording of the instruction used by Llama 3.1's math evaluation: short or step-wise
# solutions, always closed by the same sentence, which the grader reads through its \boxed{}.
LLAMA31 = (
    "Solve the following math problem efficiently and clearly:\n\n"
    "- If it is simple (two steps or fewer), give a brief solution with little explanation.\n"
    "- If it is harder (three steps or more), work through it in numbered steps:\n"
    "## Step 1: [What this step does]\n[Short explanation and calculation]\n\n"
    "## Step 2: [What this step does]\n[Short explanation and calculation]\n\n"
    "...\n\n"
    "However you solve it, end your response with exactly this sentence:\n"
    "Therefore, the final answer is: $\\boxed{{answer}}$. I hope it is correct.\n\n"
    "Here, answer is just the final number or expression that solves the problem.\n\n"
    "Problem: {question}"
)

PROMPT_STYLES: dict[str, str] = {
    "boxed": BOXED,
    "llama31": LLAMA31,
    "plain": "{question}",
}


def build_messages(question: str, style: str = "boxed", system: str | None = None) -> list[dict]:
    """Chat messages for one problem: an optional system message, then the user turn in `style`."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; known: {', '.join(PROMPT_STYLES)}")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": PROMPT_STYLES[style].format(question=question)})
    return messages


def render(tokenizer, messages: list[dict]) -> str:
    """The prompt text: the tokenizer's chat template with the assistant turn opened, or, for a
    tokenizer without one (base models), a plain "Question: ...\\nAnswer:" text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    user = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
    prefix = f"{system}\n\n" if system else ""
    return f"{prefix}Question: {user}\nAnswer:"
