"""Prompt styles for math problems: our own, and published ones read from where they are published.

Our own styles (`boxed`, `plain`, `llama31_paraphrase`) carry their text here. A published style
carries none: when a run starts it reads its template from its source (an installed package, a
model or dataset on the hub), or from the file given as `prompt_template` (`--prompt-template
FILE`), and run.json records where the template came from and its sha256. Without its source a
published style stops with an error that says where to get it.

A template is a Python format string with one placeholder, {question} or the source's own
({prompt}, {input}, {Question}); literal braces are doubled (`\\boxed{{}}`). A template written in
a chat format (Llama 3 header tokens, ChatML) is split into its turns and the model's own chat
template renders them again: the turns' text is the published one, the special tokens are the
model's. A file's one final newline is not part of its template.

Offline, save a published template once where its source can be read, copy the file, pass it
(run.json records the same sha256 either way):

    python -m eval.prompting meta_llama31_math meta_math_prompt.txt
    python -m eval run ... --prompt-style meta_llama31_math --prompt-template meta_math_prompt.txt

>>> build_messages("What is 2 + 3?", style="plain")
[{'role': 'user', 'content': 'What is 2 + 3?'}]
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
import string
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

# Our own arrangement: the question, then the step-by-step sentence that Qwen2.5-Math and
# DeepSeek-R1 publish (their own prompts are the styles `qwen25_math_cot` and `openr1_boxed`).
BOXED = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
ANSWER_LINE = ("{question}\nReply in one short sentence that ends with \"The final answer is N.\", where N is the "
               "number.")
# Our own, for base models (no chat template, no instruction following): two worked questions in
# the answer-line form, then the question, so that the continuation states "The final answer is N."
# A base model goes on to invent a next question after its answer, which the grader would read as
# the last answer stated: keep max_new_tokens short (about 12; studies/testbed.py measures it).
FEWSHOT_ANSWER_LINE = ("Question: What is 14 + 9?\nAnswer: 14 + 9 = 23. The final answer is 23.\n\n"
                       "Question: What is 31 - 17?\nAnswer: 31 - 17 = 14. The final answer is 14.\n\n"
                       "Question: What is 6 * 7?\nAnswer: 6 * 7 = 42. The final answer is 42.\n\n"
                       "Question: A box holds 3 rows of 5 eggs. How many eggs are in the box?\n"
                       "Answer: 3 * 5 = 15. The final answer is 15.\n\n"
                       "Question: {question}\nAnswer:")

# Our own paraphrase of the instruction in Meta's Llama 3.1 math evaluation prompt, not Meta's
# text (that is the style `meta_llama31_math`): short or step-wise solutions, always closed by
# the same sentence, which the grader reads through its \boxed{}.
LLAMA31_PARAPHRASE = (
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

META_EVALS = "meta-llama/Llama-3.1-8B-Instruct-evals"
META_MATH_CONFIG = "Llama-3.1-8B-Instruct-evals__math__details"
QWEN_MATH = "Qwen/Qwen2.5-Math-7B-Instruct"
LIGHTEVAL_TASKS = ("lighteval.tasks.tasks.math_500", "lighteval.tasks.default_tasks")  # >= 0.12, before

_QUESTION = "\x00QUESTION\x00"  # stands in for the question while a source renders its own prompt
_FORMAT_HINT = ("a template is a Python format string with one placeholder such as {question}; "
                "write literal braces doubled, as in \\boxed{{}}")


class TemplateUnavailable(FileNotFoundError):
    """A published style's source cannot be read here; the message says where to get it."""


class Template:
    """A prompt template as read from its source: `text` (a format string with one placeholder),
    `origin` (where it was read), `sha256` (of `text`) and `turns` ((role, format string) pairs)."""

    def __init__(self, text: str, origin: str):
        self.text, self.origin = text, origin
        self.field = _placeholder(text, origin)
        self.turns = _turns(text, origin)
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()

    def messages(self, question: str) -> list[dict]:
        return [{"role": role, "content": fmt.format_map({self.field: question})} for role, fmt in self.turns]

    def info(self) -> dict:
        return {"origin": self.origin, "sha256": self.sha256, "placeholder": self.field}


# --- the registry -----------------------------------------------------------------------------
PROMPT_STYLES: dict[str, Callable[[], Template]] = {}
PUBLISHED: set[str] = set()  # styles read from elsewhere; only these take a template file


def register(name: str, published: bool = False):
    """Decorator: add a style's reader (no arguments, returns its `Template`) under `name`."""

    def add(read: Callable[[], Template]) -> Callable[[], Template]:
        if name in PROMPT_STYLES:
            raise ValueError(f"prompt style {name!r} is already registered")
        PROMPT_STYLES[name] = read
        if published:
            PUBLISHED.add(name)
        return read

    return add


# --- our own styles ---------------------------------------------------------------------------
@register("boxed")
def boxed() -> Template:
    """Our own: the question, then "Please reason step by step, and put your final answer within \\boxed{}."."""
    return Template(BOXED, "eval.prompting.BOXED (our own)")


@register("answer_line")
def answer_line() -> Template:
    """Our own: the question, then a request for one short sentence ending "The final answer is N."
    (a stated answer within few tokens, for small models on numeric sets; see studies/testbed.py)."""
    return Template(ANSWER_LINE, "eval.prompting.ANSWER_LINE (our own)")


@register("fewshot_answer_line")
def fewshot_answer_line() -> Template:
    """Our own, for base models: two worked questions answered "The final answer is N.", then the
    question after "Question:" and an open "Answer:" (see FEWSHOT_ANSWER_LINE)."""
    return Template(FEWSHOT_ANSWER_LINE, "eval.prompting.FEWSHOT_ANSWER_LINE (our own)")


@register("plain")
def plain() -> Template:
    """The question alone."""
    return Template("{question}", "eval.prompting (the question alone)")


@register("llama31_paraphrase")
def llama31_paraphrase() -> Template:
    """Our own paraphrase of Meta's Llama 3.1 math instruction (for Meta's text: `meta_llama31_math`)."""
    return Template(LLAMA31_PARAPHRASE, "eval.prompting.LLAMA31_PARAPHRASE (our paraphrase of Meta's prompt)")


# --- published styles -------------------------------------------------------------------------
@register("lighteval_math500", published=True)
def lighteval_math500() -> Template:
    """lighteval's Math-500 prompt: the query that the `math_500` task's prompt function writes,
    read from the installed lighteval package (optional: `pip install lighteval`), through
    `lighteval.tasks.tasks.math_500.math_500.prompt_function` (0.12 on) or
    `lighteval.tasks.default_tasks.math_500.prompt_function` (before). It is the user turn, as
    with lighteval's --use-chat-template. Up to 0.12 it asks for "Therefore, the final answer is:
    $\\boxed{ANSWER}$", the prompt of open-r1's and DeepSeek-R1's Math-500 tables; 0.13 asks for an
    "ANSWER: ..." line instead, which the harness's answer extractor does not read.
    """
    hint = ("prompt style lighteval_math500 reads its template from the lighteval package: pip install lighteval "
            "(before 0.13 for the boxed prompt of published Math-500 tables), or pass --prompt-template FILE")
    module_name, module = _import_first(LIGHTEVAL_TASKS, hint)
    doc = module.math_500.prompt_function({"problem": _QUESTION, "solution": "", "answer": ""}, "math_500")
    template = _with_placeholder(doc.query, _QUESTION, f"lighteval {_version('lighteval')}: "
                                                        f"{module_name}.math_500.prompt_function")
    if "boxed" not in template.text:
        warnings.warn(f"{template.origin} does not ask for \\boxed{{}}; the harness extracts answers from \\boxed{{}} "
                      "or 'the final answer is' (lighteval before 0.13 has the boxed Math-500 prompt)", stacklevel=2)
    return template


@register("meta_llama31_math", published=True)
def meta_llama31_math() -> Template:
    """Meta's Llama 3.1 math evaluation prompt (0-shot chain of thought), read from the model's
    published evaluation details on the hub: dataset `meta-llama/Llama-3.1-8B-Instruct-evals`,
    config `Llama-3.1-8B-Instruct-evals__math__details`, split `latest`, the first row's
    `input_final_prompts[0]` with that row's `input_question` made the placeholder. Needs
    `datasets`, hub access and the dataset's (gated) terms accepted. The prompt is written in
    Llama 3 header tokens; its turns are kept and the model's chat template renders them, so a
    template that adds turns of its own (Llama-3.1-Instruct's "Cutting Knowledge Date" system
    block) adds them here too.
    """
    where = f"hub dataset {META_EVALS} (config {META_MATH_CONFIG}, split latest)"
    try:
        from datasets import load_dataset

        row = next(iter(load_dataset(META_EVALS, META_MATH_CONFIG, split="latest", streaming=True)))
    except Exception as e:  # noqa: BLE001 - offline, gated, missing package: one fix for all
        raise TemplateUnavailable(
            f"prompt style meta_llama31_math reads its template from the {where}, field input_final_prompts, and "
            f"could not ({type(e).__name__}: {e}). Online: pip install datasets, accept the dataset's terms on the "
            "hub and log in (hf auth login, or set HF_TOKEN). Offline: where the hub is reachable run "
            "`python -m eval.prompting meta_llama31_math FILE`, copy FILE here and pass --prompt-template FILE"
        ) from e
    return _with_placeholder(row["input_final_prompts"][0], row["input_question"],
                             f"{where}: input_final_prompts[0] of the first row")


@register("qwen25_math_cot", published=True)
def qwen25_math_cot() -> Template:
    """Qwen2.5-Math's chain-of-thought chat prompt: Qwen's system turn "Please reason step by step,
    and put your final answer within \\boxed{}." and the question as the user turn. Read from the
    chat template of the hub model `Qwen/Qwen2.5-Math-7B-Instruct` (its tokenizer, rendered for one
    user turn: the system turn is the template's default). The same prompt is the
    `qwen25-math-cot` entry of PROMPT_TEMPLATES in Qwen2.5-Math's evaluation/utils.py (placeholder
    {input}), which a file may hold instead.
    """
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(QWEN_MATH)
        text = tok.apply_chat_template([{"role": "user", "content": _QUESTION}], add_generation_prompt=True,
                                       tokenize=False)
    except Exception as e:  # noqa: BLE001 - offline or no such file: one fix for all
        raise TemplateUnavailable(
            f"prompt style qwen25_math_cot reads its template from the chat template of the hub model {QWEN_MATH} "
            f"and could not ({type(e).__name__}: {e}). Offline: where the hub is reachable run "
            "`python -m eval.prompting qwen25_math_cot FILE`, or save the qwen25-math-cot entry of PROMPT_TEMPLATES "
            "in Qwen2.5-Math's evaluation/utils.py to FILE, and pass --prompt-template FILE"
        ) from e
    template = _with_placeholder(text, _QUESTION, f"hub model {QWEN_MATH}: chat template, default system turn")
    if [role for role, _ in template.turns] != ["system", "user"]:
        raise ValueError(f"{template.origin}: expected a system and a user turn, got {template.turns}")
    return template


@register("openr1_boxed", published=True)
def openr1_boxed() -> Template:
    """The R1 boxed prompt as open-r1 sends it to DeepSeek-R1 (the OpenR1-Math generations): the
    default of `--prompt-template` in open-r1's scripts/generate_reasoning.py (GitHub
    huggingface/open-r1), placeholder {prompt}, as the user turn. open-r1 is not a package on an
    index, so this style reads a file only.
    """
    raise TemplateUnavailable(
        "prompt style openr1_boxed has no source to read here: its template is the default of --prompt-template in "
        "scripts/generate_reasoning.py of huggingface/open-r1 on GitHub; save that string's value (as print() shows "
        "it, placeholder {prompt}) to FILE and pass --prompt-template FILE"
    )


# --- reading ------------------------------------------------------------------------------------
def load_template(style: str, path: str | None = None) -> Template:
    """`style`'s template: from `path` (published styles only) if given, else from its source."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; known: {', '.join(PROMPT_STYLES)}")
    if path is None:
        return _from_source(style)
    if style not in PUBLISHED:
        raise ValueError(f"prompt style {style!r} is our own and takes no --prompt-template; the published styles "
                         f"do: {', '.join(sorted(PUBLISHED))}")
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"prompt template file {path} does not exist")
    st = p.stat()
    return _from_file(str(p), st.st_mtime_ns, st.st_size)


def prompt_info(style: str, path: str | None = None) -> dict:
    """What run.json records of a run's prompt: style, origin, sha256 and placeholder."""
    return {"style": style, **load_template(style, path).info()}


def build_messages(question: str, style: str = "boxed", system: str | None = None,
                   template: str | None = None) -> list[dict]:
    """Chat messages for one problem in `style` (its template read from the file `template` if
    given), after an optional system message."""
    messages = load_template(style, template).messages(question)
    if system:
        if any(m["role"] == "system" for m in messages):
            raise ValueError(f"prompt style {style!r} has its own system turn; give no system message")
        messages.insert(0, {"role": "system", "content": system})
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


# --- the chat template (--chat_template) -------------------------------------------------------
#: --chat_template's words; any other value names a Jinja template file
CHAT_TEMPLATE_MODES = ("auto", "none")
#: what a prompt becomes without a chat template (`zs_llm.model.render_prompt`)
PLAIN_PROMPT = "plain `role: content` lines ending in `assistant:`"


def chat_template_record(choice: str) -> dict:
    """What run.json records of `--chat_template` before the model loads: the choice, and for a
    file its path and sha256 (a resume on an edited file is refused). A missing or unreadable
    file is a one-line error."""
    if choice in CHAT_TEMPLATE_MODES:
        return {"choice": choice}
    p = Path(choice).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--chat_template {choice}: no such file; give auto, none or a Jinja chat template "
                                "file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--chat_template {choice} is not UTF-8 text; save the template as UTF-8") from None
    return {"choice": "file", "path": str(p.resolve()), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def apply_chat_template(tokenizer, choice: str, system: str | None = None) -> dict:
    """Set `tokenizer.chat_template` as `--chat_template` asks (auto: leave it; none: drop it; a
    file: its text), check that it renders a problem's messages (after the system message
    `system`), and return run.json's `prompt_format`: which was used, and `plain` when prompts
    are plain lines because there is no template (a base model under auto says so in the report)."""
    from zs_llm.model import render_prompt

    if choice == "none":
        tokenizer.chat_template = None
    elif choice != "auto":
        tokenizer.chat_template = Path(choice).expanduser().read_text(encoding="utf-8")
    plain = not getattr(tokenizer, "chat_template", None)
    probe = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "1 + 1?"}]
    try:
        render_prompt(tokenizer, probe)
    except Exception as e:  # noqa: BLE001 - jinja2 raises its own types, a template its own exceptions
        where = f"the chat template file {choice}" if choice not in CHAT_TEMPLATE_MODES else "the tokenizer's chat template"
        what = "a system message and a user message" if system else "a user message"
        raise ValueError(f"{where} does not render {what} ({type(e).__name__}: {e}); fix the template, or pass "
                         "--chat_template none" + (" or drop --system_prompt" if system else "")) from None
    used = PLAIN_PROMPT if plain else "the tokenizer's chat template" if choice == "auto" else f"the file {choice}"
    if plain and choice == "auto":
        used += " (the tokenizer has no chat template)"
    return {"chat_template": choice, "rendered_with": used, "plain": plain}


@functools.cache
def _from_source(style: str) -> Template:  # a hub read happens once per process
    return PROMPT_STYLES[style]()


@functools.cache
def _from_file(path: str, mtime_ns: int, size: int) -> Template:  # keyed by the stat: an edited file is reread
    return Template(Path(path).read_text(encoding="utf-8").removesuffix("\n"), f"file {path}")


def _import_first(modules: tuple[str, ...], hint: str):
    """(name, module) of the first of `modules` that imports; `hint` when none exists."""
    for name in modules:
        try:
            return name, importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise  # the package is there, a dependency of it is not
    raise TemplateUnavailable(hint)


def _version(package: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "(version unknown)"


def _with_placeholder(prompt: str, question: str, origin: str) -> Template:
    """The template of a prompt its source wrote for `question`: the question becomes {question},
    every other brace is doubled."""
    parts = prompt.split(question)
    if len(parts) != 2:
        raise ValueError(f"{origin}: expected the question once in the published prompt, found it "
                         f"{len(parts) - 1} times")
    escape = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    return Template(escape(parts[0]) + "{question}" + escape(parts[1]), origin)


def _placeholder(text: str, origin: str) -> str:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise ValueError(f"template from {origin}: {e}; {_FORMAT_HINT}") from None
    if len(names) != 1 or not next(iter(names)).isidentifier():
        raise ValueError(f"template from {origin} has placeholders {sorted(names)}; {_FORMAT_HINT}")
    return names.pop()


# Chat formats a published prompt may be written in: a turn, what may stand before the first turn,
# and the opened assistant turn that may close the text.
_CHAT_FORMATS = (
    (re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S), "<|begin_of_text|>",
     "<|start_header_id|>assistant<|end_header_id|>\n\n"),  # Llama 3
    (re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n?", re.S), "", "<|im_start|>assistant\n"),  # ChatML
)


def _turns(text: str, origin: str) -> list[tuple[str, str]]:
    """(role, text) turns of a chat-formatted template; a template without chat tokens is one user turn."""
    for turn, head, opened in _CHAT_FORMATS:
        if not turn.search(text):
            continue
        body, turns, pos = text.removeprefix(head), [], 0
        for m in turn.finditer(body):
            if m.start() != pos:
                raise ValueError(f"template from {origin}: text outside the chat turns: {body[pos:m.start()]!r}")
            turns.append((m.group(1), m.group(2)))
            pos = m.end()
        if body[pos:].rstrip() not in ("", opened.rstrip()):  # the opened assistant turn is the model's to write
            raise ValueError(f"template from {origin}: text after the last chat turn: {body[pos:]!r}")
        return turns
    return [("user", text)]


def main(argv: list[str] | None = None) -> int:
    """`python -m eval.prompting STYLE FILE`: save a published style's template, read from its
    source, to FILE, for --prompt-template on a machine without that source."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m eval.prompting", description=main.__doc__)
    ap.add_argument("style", choices=sorted(PUBLISHED))
    ap.add_argument("file")
    args = ap.parse_args(argv)
    try:
        template = load_template(args.style)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.file).write_text(template.text + "\n", encoding="utf-8")
    print(f"{args.file}: {template.origin}; sha256 {template.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
