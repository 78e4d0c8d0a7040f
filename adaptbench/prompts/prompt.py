"""Patterns, target prefixes, verbalizers and the presets of the reference study.

A prompt turns an example into the text that ends where the answer token goes::

    query = pattern.format(text1=..., text2=...) + target_prefix        # "A B ?"
    demonstration = query + verbalizer[label] + separator               # "A B ? Yes\n\n"
    context = instruction + separator + demonstrations (k of them)

Verbalizer words carry their leading space (" Yes"), and the query never ends in one, so the answer
token is the same token inside a demonstration and at the prediction position.  (The reference
code's "minimal" query ends in "? " and then scores "ĠYes", a token boundary that never occurs in its
own demonstrations; we do not copy that.)  ICL, PBFT and CD share this one object.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from functools import cached_property

from ..errors import PromptError
from ..data.schema import Example


@dataclass(frozen=True)
class Prompt:
    pattern: str
    target_prefix: str = ""
    separator: str = "\n\n"
    verbalizer: tuple[str, ...] = ()  # one word per label id
    instruction: str = ""  # optional task description before the demonstrations

    def query(self, ex: Example) -> str:
        return self.pattern.format(text1=ex.text1, text2=ex.text2) + self.target_prefix

    def demonstration(self, ex: Example) -> str:
        return self.query(ex) + self.verbalizer[ex.label] + self.separator

    def context(self, demonstrations: list[Example]) -> str:
        head = self.instruction + self.separator if self.instruction else ""
        return head + "".join(self.demonstration(ex) for ex in demonstrations)


_NLI = (" Yes", " No")  # entailment, not entailed
_NO_YES = (" No", " Yes")  # label 0 = negative class (not duplicate / unacceptable)

# The reference study's prompt formats (uds-lsv/llmft scripts), per task family.
PRESETS: dict[str, dict[str, Prompt]] = {
    "minimal": {
        "nli": Prompt("{text1} {text2} ?", "", "\n\n", _NLI),
        "paraphrase": Prompt("{text1} {text2} ?", "", "\n\n", _NO_YES),
        "acceptability": Prompt("{text1} ?", "", " ", _NO_YES),
        "custom": Prompt("{text1} {text2} ?", "", "\n\n"),
    },
    "gpt-3": {
        "nli": Prompt("{text1} question: {text2} Yes or No?", " answer:", "\n\n", _NLI),
        "acceptability": Prompt("grammatical: {text1} Yes or No?", " answer:", "\n\n", _NO_YES),
    },
    "eval-harness": {
        "nli": Prompt("{text1} \nQuestion: {text2} True or False?", "\nAnswer:", "\n\n", (" True", " False")),
        "paraphrase": Prompt("Question 1: {text1}\nQuestion 2: {text2}\nQuestion: Do both questions ask "
                             "the same thing?", " Answer:", "\n\n", _NO_YES),
    },
}


def preset(name: str, family: str, n_fields: int) -> Prompt:
    if name not in PRESETS:
        raise PromptError(f"unknown prompt preset {name!r}; presets: {', '.join(PRESETS)}")
    if family not in PRESETS[name]:
        have = [p for p, fams in PRESETS.items() if family in fams]
        raise PromptError(f"prompt preset {name!r} has no format for {family} tasks; "
                          f"presets for {family}: {', '.join(have) or 'none'} (or give a pattern)")
    prompt = PRESETS[name][family]
    if family == "custom" and n_fields == 1:
        prompt = replace(prompt, pattern="{text1} ?")
    return prompt


def check_prompt(prompt: Prompt, n_fields: int, label_names: tuple[str, ...]) -> None:
    """Reject patterns and verbalizers that cannot work with the task, naming the field at fault."""
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(prompt.pattern) if f is not None}
    except ValueError as e:
        raise PromptError(f"prompt.pattern {prompt.pattern!r} is not a valid pattern: {e}") from None
    unknown = used - {"text1", "text2"}
    if unknown:
        raise PromptError(f"prompt.pattern uses {sorted(unknown)}; only {{text1}} and {{text2}} exist")
    needed = {"text1", "text2"} if n_fields == 2 else {"text1"}
    if used != needed:
        raise PromptError(f"prompt.pattern {prompt.pattern!r} must use exactly {sorted(needed)} for a task "
                          f"with {n_fields} text field(s), it uses {sorted(used)}")
    if len(prompt.verbalizer) != len(label_names):
        raise PromptError(f"prompt.verbalizer has {len(prompt.verbalizer)} words for {len(label_names)} labels "
                          f"{list(label_names)}")
    if len(set(prompt.verbalizer)) != len(prompt.verbalizer):
        raise PromptError(f"prompt.verbalizer words must differ: {list(prompt.verbalizer)}")
    for word in prompt.verbalizer:
        if prompt.target_prefix.endswith(" ") and word.startswith(" "):
            raise PromptError(f"prompt.target_prefix {prompt.target_prefix!r} ends with a space and verbalizer "
                              f"{word!r} starts with one: the answer would follow two spaces")


@dataclass(frozen=True)
class ReadAfter:
    """Each text read after one context as one string (:meth:`PromptEncoder.read_after`): the model reads
    ``prefix + suffixes[i]``, in which the text's own tokens are ``suffixes[i][starts[i]:]``."""

    context_ids: list[int]  # encode(context): the context read alone
    prefix: list[int]  # the tokens every reading starts with (what a KV cache holds)
    suffixes: list[list[int]]  # the rest of each reading
    starts: list[int]  # where each text's own tokens begin in its suffix
    changed: int  # texts whose own tokens differ from the text tokenised alone

    def own(self, i: int) -> list[int]:
        return self.suffixes[i][self.starts[i]:]

    def seam(self, i: int) -> list[int]:
        """The tokens between the prefix and text i's own tokens (the context's tail as read before it)."""
        return self.suffixes[i][:self.starts[i]]


class PromptEncoder:
    """A prompt bound to a tokenizer: verbalizer token ids, and the token ids of prompt texts.

    The model always sees the tokens of the prompt *text*: context and query are joined as one string
    and tokenised together, as the reference study does.  Tokenising them apart and joining the ids
    gives other tokens at the seam with byte-level BPE (``"\\n\\n"`` at the end of a string is one
    token ``ĊĊ``, before a word two ``Ċ``) and a spurious dummy prefix with SentencePiece.  For a cached
    prefix, :meth:`continuations` finds the longest token prefix that every query's full tokenisation
    shares with the context's; only the rest runs per query.
    """

    def __init__(self, tokenizer, prompt: Prompt, label_names: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.label_names = label_names
        self.label_token_ids = [self._single_token(w, name) for w, name in zip(prompt.verbalizer, label_names)]
        if len(set(self.label_token_ids)) != len(self.label_token_ids):
            raise PromptError(f"verbalizer words {list(prompt.verbalizer)} map to the same token")

    @cached_property
    def label_tokens(self) -> list[str]:
        """The verbalizer tokens as the tokenizer spells them (for the record)."""
        return self.tokenizer.convert_ids_to_tokens(self.label_token_ids)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _single_token(self, word: str, label: str) -> int:
        # Tokenise the word after some text, as it occurs in a prompt: SentencePiece tokenizers treat a
        # word at the very start of a string differently (extra "▁").
        anchor = self._ids("answer:")
        ids = self._ids("answer:" + word)
        tail = ids[len(anchor):]
        if ids[: len(anchor)] != anchor or len(tail) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(tail if ids[: len(anchor)] == anchor else ids)
            raise PromptError(f"verbalizer {word!r} (label {label!r}) is not exactly one token for this "
                              f"tokenizer: it becomes {pieces}; choose a word that is a single token")
        return tail[0]

    @cached_property
    def start_ids(self) -> list[int]:
        """The tokens the tokenizer puts before a sequence (e.g. BOS), found by comparison."""
        plain = self._ids("x")
        full = self.tokenizer("x")["input_ids"]
        for i in range(len(full) - len(plain) + 1):
            if full[i : i + len(plain)] == plain:
                return full[:i]
        return []

    def text_ids(self, text: str) -> list[int]:
        """The text's tokens alone, without start tokens (an input appended to a context's tokens)."""
        return self._ids(text)

    def encode(self, text: str) -> list[int]:
        """Token ids of a whole sequence: the start tokens, then the text (== ``tokenizer(text)`` for a
        decoder's tokenizer, minus any end-of-sequence token: the answer follows the text)."""
        return self.start_ids + self._ids(text)

    def context_text(self, demonstrations: list[Example]) -> str:
        return self.prompt.context(demonstrations)

    def query_ids(self, ex: Example) -> list[int]:
        """The query alone (PBFT, vanilla, a CD student, zero-shot ICL)."""
        return self.encode(self.prompt.query(ex))

    def continuations(self, context: str, context_ids: list[int], texts: list[str],
                      chunk: int = 512) -> tuple[int, list[list[int]]]:
        """``(m, suffixes)`` such that ``encode(context + texts[i]) == context_ids[:m] + suffixes[i]``.

        ``context_ids`` is ``encode(context)``; ``m`` is the longest prefix of it that every full
        tokenisation shares (at most one token short of each), so the KV cache of ``context_ids[:m]``
        serves every text exactly.  An empty context gives ``m = 0`` and the texts encoded alone.
        """
        if not context:
            return 0, [self.encode(t) for t in texts]
        shared, tails = [], []
        for start in range(0, len(texts), chunk):  # batched: the tokenizer runs in Rust, in parallel
            batch = self.tokenizer([context + t for t in texts[start:start + chunk]], add_special_tokens=False)
            for ids in batch["input_ids"]:
                full = self.start_ids + ids
                n = min(common_prefix_length(full, context_ids), len(full) - 1)
                shared.append(n)
                tails.append(full[n:])
        m = min(shared, default=len(context_ids))
        return m, [context_ids[m:n] + tail for n, tail in zip(shared, tails)]


    def read_after(self, context: str, texts: list[str], chunk: int = 512) -> ReadAfter:
        """What a model reads when each text follows ``context`` as one string (context + text tokenised
        together, as a user who pastes both into a prompt gets), split for a KV cache and for a student.

        The shared prefix is the longest token prefix of ``encode(context)`` that every reading starts
        with (the cache holds it); each reading's rest is its suffix, in which the text's *own* tokens
        begin at the first token that holds one of the text's characters (tokens before it are the
        context's tail, re-tokenised at the seam: ``"\\n\\n"`` is one token ``ĊĊ`` at the end of a string
        and two ``Ċ`` before code).  A student that never sees the context reads the own tokens."""
        context_ids = self.encode(context)
        fulls, starts = [], []
        for begin in range(0, len(texts), chunk):  # batched: the tokenizer runs in Rust, in parallel
            joined = [context + t for t in texts[begin:begin + chunk]]
            for text, ids, own_from in zip(texts[begin:begin + chunk], *self._ids_and_seams(joined, len(context))):
                fulls.append(self.start_ids + ids)
                starts.append(len(self.start_ids) + own_from)
        shared = min((min(common_prefix_length(f, context_ids), len(f) - 1, b) for f, b in zip(fulls, starts)),
                     default=len(context_ids))
        shared = max(shared, 0)
        suffixes = [f[shared:] for f in fulls]
        own_starts = [b - shared for b in starts]
        changed = sum(f[b:] != self.text_ids(t) for f, b, t in zip(fulls, starts, texts))
        return ReadAfter(context_ids, context_ids[:shared], suffixes, own_starts, changed)

    def text_of_first_tokens(self, text: str, n: int) -> str:
        """The text that ``encode(text)[:n]`` reads (start tokens count): ``text`` cut where its n-th token
        ends, so it can be read after as one string.  With a slow tokenizer (no offsets) the tokens are
        decoded instead."""
        k = n - len(self.start_ids)
        if k <= 0:
            return ""
        try:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        except (NotImplementedError, TypeError, ValueError):
            return self.tokenizer.decode(self._ids(text)[:k], clean_up_tokenization_spaces=False)
        return text if k >= len(offsets) else text[:offsets[k - 1][1]]

    def _ids_and_seams(self, joined: list[str], seam: int) -> tuple[list[list[int]], list[int]]:
        """Token ids of each string, and the index of its first token that ends after character ``seam``."""
        try:
            batch = self.tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError):  # a slow tokenizer: no offsets
            ids = self.tokenizer(joined, add_special_tokens=False)["input_ids"]
            return ids, [self._seam_without_offsets(x, text[seam:]) for x, text in zip(ids, joined)]
        seams = [next((j for j, (_, end) in enumerate(offsets) if end > seam), len(offsets))
                 for offsets in batch["offset_mapping"]]
        return batch["input_ids"], seams

    def _seam_without_offsets(self, ids: list[int], text: str) -> int:
        """Without offsets: where the text's own tokens begin, if the reading ends with them, else where
        as many tokens as the text has alone would begin."""
        own = self.text_ids(text)
        return max(len(ids) - len(own), 0)

    def icl_inputs(self, demonstrations: list[Example], examples: list[Example]) -> tuple[list[int], list[list[int]]]:
        """``(prefix, queries)``: ``prefix + queries[i]`` are the tokens of example i's ICL prompt text,
        and ``prefix`` is what all of them share (the part a KV cache can hold)."""
        text = self.context_text(demonstrations)
        ids = self.encode(text) if text else []
        shared, queries = self.continuations(text, ids, [self.prompt.query(ex) for ex in examples])
        return ids[:shared], queries


def common_prefix_length(a: list[int], b: list[int], near_end: int = 16) -> int:
    """Length of the common prefix of two id lists.  Sequences that share a context usually agree up
    to its last few tokens: compare that long slice at C speed first, then walk the rest."""
    n = min(len(a), len(b))
    i = max(0, n - near_end)
    if a[:i] != b[:i]:
        i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
