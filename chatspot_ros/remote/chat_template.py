"""A Jinja chat template for vLLM that renders exactly what ``referring.conversation`` renders.

Checkpoints trained with the Vicuna v1 wrapper (LLaVA-1.5, ChatSpot, the tabletop models) often
ship no chat template; vLLM's chat completions then need ``--chat-template``. vLLM turns a user
turn of [image, text] into the string ``"<image>\\n" + text`` (placeholders first, joined with
"\\n") and renders the template over it; this template puts the checkpoint's leading special
tokens (BOS, the ones the local runtime's ``tokenizer(prompt, add_special_tokens=True)`` adds) and
the system text in front, so the server tokenizes the very string the local runtime does:

    <s>A chat between ... questions. USER: <image>\\n<instruction> ASSISTANT:

    python -m chatspot_ros.remote.chat_template MODEL_DIR [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chatspot_ros.referring.conversation import ConversationTemplate, get_conversation

VLLM_PART_SEPARATOR = "\n"  # how vLLM joins the image placeholder and the text of one turn


def _literal(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Jinja string literal


def chat_template(conversation: ConversationTemplate, leading: str = "") -> str:
    """The template for ``conversation`` (a system text, then USER/ASSISTANT turns)."""
    if conversation.after_image != VLLM_PART_SEPARATOR:
        raise ValueError(
            f"conversation {conversation.name!r} puts {conversation.after_image!r} after the image; vLLM puts "
            f"{VLLM_PART_SEPARATOR!r} there, so no template can render it exactly (use the checkpoint's own)"
        )
    if not conversation.before_image.startswith(conversation.system):
        raise ValueError(f"conversation {conversation.name!r} does not start with its system text")
    first_user = conversation.before_image[len(conversation.system):]
    return (
        "{#- chatspot_ros: " + conversation.name + ", from chatspot_ros/referring/conversation.py -#}\n"
        "{{- " + _literal(leading) + " -}}\n"
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{{- messages[0]['content'] -}}{%- set turns = messages[1:] -%}\n"
        "{%- else -%}\n"
        "{{- " + _literal(conversation.system) + " -}}{%- set turns = messages -%}\n"
        "{%- endif -%}\n"
        "{%- for message in turns -%}\n"
        "{%- if message['role'] == 'user' -%}\n"
        "{{- (" + _literal(first_user) + " if loop.first else " + _literal(conversation.turn_separator
                                                                          + conversation.user) + ")"
        " + message['content'] + " + _literal(conversation.tail) + " -}}\n"
        "{%- elif message['role'] == 'assistant' -%}\n"
        "{{- ' ' + message['content'] + " + _literal(conversation.end_of_turn) + " -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
    )


def leading_special_tokens(model_dir: str | Path) -> str:
    """The text of the special tokens the checkpoint's tokenizer puts before a prompt (e.g. "<s>")."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    probe = "USER: hello"
    with_special = list(tok(probe, add_special_tokens=True)["input_ids"])
    plain = list(tok(probe, add_special_tokens=False)["input_ids"])
    extra = len(with_special) - len(plain)
    if extra < 0 or with_special[extra:] != plain:
        raise ValueError(f"{model_dir}: the tokenizer adds special tokens after the prompt; write its template by hand")
    return "".join(tok.convert_ids_to_tokens(with_special[:extra]))


def template_for_checkpoint(model_dir: str | Path) -> str:
    from chatspot_ros.remote.checkpoint import read_served_model

    info = read_served_model(model_dir)
    return chat_template(get_conversation(info.conversation), leading_special_tokens(model_dir))


def has_chat_template(model_dir: str | Path) -> bool:
    """Whether the checkpoint ships a chat template (transformers 4.x or 5 layouts)."""
    path = Path(model_dir)
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        except json.JSONDecodeError:
            return False
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatspot_ros.remote.chat_template", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="checkpoint folder")
    parser.add_argument("--out", type=Path, help="write the template here (default: stdout)")
    parser.add_argument("--if-missing", action="store_true",
                        help="print nothing and exit 3 when the checkpoint ships its own template")
    args = parser.parse_args(argv)
    if args.if_missing and has_chat_template(args.model):
        return 3
    try:
        template = template_for_checkpoint(args.model)
    except (FileNotFoundError, ValueError) as err:
        print(f"chat_template: error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(template)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(template, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
