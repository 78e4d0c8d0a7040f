"""Write the data of the worked examples in configs/examples/ from real text on this machine.

    pip install --no-deps chatterbot-corpus==1.3.3      # the dialogue corpus (BSD-3-Clause), data only
    python scripts/make_example_data.py                 # -> configs/examples/data/{chat,code}/

- chat/: a conversation as the context -- a system prompt and example dialogues of the chatterbot
  corpus's persona categories -- and real user utterances of its other categories as inputs.
- code/: a real source file as the context (the standard library's json/encoder.py) and the functions
  of related modules (json/decoder.py, json/scanner.py, json/__init__.py) as inputs; json/decoder.py
  whole, whose lines the code-completion example completes.

The files are committed, so the examples run without this script; it documents where they come from
and rebuilds them (tests check that the shipped files match a rebuild where the corpus is installed).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import inspect
import json
import os

import yaml

PERSONA = ("botprofile", "humor", "psychology")
INPUT_CATEGORIES = ("ai", "computers", "emotion", "food", "science", "sports", "movies", "history", "literature",
                    "money", "health", "greetings")
SYSTEM = ("You are Chatterbot, a cheerful software assistant with a dry sense of humour. You answer in one or two "
          "short sentences, you never pretend to be human, and you like to turn a question into a small joke "
          "about being a program. The conversations below show how you talk.")
MAX_CONTEXT_PAIRS = 160
MAX_INPUTS = 80
CODE_CONTEXT = "json.encoder"
CODE_INPUTS = ("json.decoder", "json.scanner", "json")
CODE_COMPLETION = "json.decoder"  # its lines are completed with json/encoder.py as the context


def corpus_file(name: str) -> str:
    """A chatterbot-corpus English file, found through the installed distribution's file list."""
    try:
        files = importlib.metadata.files("chatterbot-corpus") or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("chatterbot-corpus is not installed: pip install --no-deps chatterbot-corpus==1.3.3") from None
    for f in files:
        if f.as_posix().endswith(f"data/english/{name}.yml"):
            return str(f.locate())
    raise SystemExit(f"chatterbot-corpus has no English category {name!r}")


def conversations(name: str) -> list[list[str]]:
    with open(corpus_file(name), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return [[str(turn).strip() for turn in conv] for conv in data.get("conversations", []) if len(conv) >= 1]


def chat_context() -> list[dict]:
    turns = [{"role": "system", "content": SYSTEM}]
    pairs = [conv[:2] for name in PERSONA for conv in conversations(name) if len(conv) >= 2]
    for user, bot in pairs[:MAX_CONTEXT_PAIRS]:
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
    return turns


def chat_inputs() -> list[dict]:
    """First user utterances of the input categories' conversations, taken in turn from each category
    (so every topic is represented), without repeats."""
    per_category = [[conv[0] for conv in conversations(name)] for name in INPUT_CATEGORIES]
    seen, out = set(), []
    for round_ in range(max(map(len, per_category))):
        for texts in per_category:
            if round_ < len(texts) and texts[round_].lower() not in seen and len(texts[round_]) > 3:
                seen.add(texts[round_].lower())
                out.append({"role": "user", "content": texts[round_]})
    return out[:MAX_INPUTS]


def functions_of(module_name: str) -> list[str]:
    """The source of every top-level function and of every method of a module's classes."""
    module = __import__(module_name, fromlist=["_"])
    source = inspect.getsource(module)
    chunks = []
    for node in ast.parse(source).body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        for member in members:
            if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                chunks.append(ast.get_source_segment(source, member, padded=True))
    return [c for c in chunks if c and c.count("\n") >= 2]


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "configs", "examples", "data"))
    args = parser.parse_args()
    chat, code = os.path.join(args.out, "chat"), os.path.join(args.out, "code")
    os.makedirs(chat, exist_ok=True)
    os.makedirs(code, exist_ok=True)
    write_jsonl(os.path.join(chat, "context.jsonl"), chat_context())
    write_jsonl(os.path.join(chat, "inputs.jsonl"), chat_inputs())
    with open(os.path.join(code, "json_encoder.py"), "w", encoding="utf-8") as f:
        f.write(inspect.getsource(__import__(CODE_CONTEXT, fromlist=["_"])))
    write_jsonl(os.path.join(code, "inputs.jsonl"), [{"text": c} for m in CODE_INPUTS for c in functions_of(m)])
    with open(os.path.join(code, "json_decoder.py"), "w", encoding="utf-8") as f:
        f.write(inspect.getsource(__import__(CODE_COMPLETION, fromlist=["_"])))
    print(f"wrote {chat} and {code}")


if __name__ == "__main__":
    main()
