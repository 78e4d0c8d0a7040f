"""Retrieval over a long context: the text cut into overlapping chunks of tokens, the chunks most like a
query found by BM25 (Robertson & Zaragoza, 2009, through the ``bm25s`` package) -- or by the cosine
similarity of sentence embeddings (a local sentence-transformers model, as dense retrievers since
Karpukhin et al., 2020 rank passages) -- and put back in context order.

Chunks are character spans cut at token boundaries (the tokenizer's offsets), so that chunks that cover
the whole context join back into exactly its text: retrieving every chunk gives ICL's own prompt.
Adjacent or overlapping chunks are merged; chunks with a gap between them are joined by ``separator``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


def chunk_spans(tokenizer, text: str, chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of ``chunk_tokens`` tokens each, a chunk starting ``chunk_tokens - overlap`` tokens
    after the one before; consecutive spans touch or overlap (a chunk starts where its first token's
    predecessor ends), the first starts at 0 and the last ends at the text's end."""
    if not 0 <= overlap < chunk_tokens:
        raise ConfigError(f"rag: overlap ({overlap}) must be at least 0 and less than chunk_tokens ({chunk_tokens})")
    try:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError) as e:
        raise ConfigError(f"rag: chunking by tokens needs a fast tokenizer (character offsets): {e}") from None
    n, spans = len(offsets), []
    for a in range(0, max(n, 1), chunk_tokens - overlap):
        b = min(a + chunk_tokens, n)
        spans.append((offsets[a - 1][1] if a > 0 else 0, offsets[b - 1][1] if b < n else len(text)))
        if b >= n:
            break
    return spans


def joined(text: str, spans: list[tuple[int, int]], separator: str) -> str:
    """The chosen spans in context order, merged where they touch or overlap, the rest joined by ``separator``."""
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return separator.join(text[a:b] for a, b in merged)


@dataclass
class _Chunks:
    text: str
    spans: list[tuple[int, int]]
    k: int
    separator: str = "\n\n"

    def __post_init__(self):
        if self.k < 1:
            raise ConfigError(f"rag: k is the number of chunks put in the prompt, at least 1; got {self.k}")

    def retrieve(self, query: str) -> list[int]:
        raise NotImplementedError

    def context_for(self, query: str) -> str:
        """The prompt's context for ``query``: its top-k chunks in context order."""
        return joined(self.text, [self.spans[i] for i in self.retrieve(query)], self.separator)


@dataclass
class Bm25Chunks(_Chunks):
    """A context's chunks and their BM25 index (English stop words removed, as bm25s does by default)."""

    def __post_init__(self):
        import bm25s

        super().__post_init__()
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize([self.text[a:b] for a, b in self.spans], stopwords="en",
                                        show_progress=False), show_progress=False)

    def retrieve(self, query: str) -> list[int]:
        """The indices of the ``k`` chunks (all, if there are fewer) that score highest for ``query``."""
        import bm25s

        k = min(self.k, len(self.spans))
        words = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
        docs, _ = self.index.retrieve(words, k=k, show_progress=False, n_threads=1)
        return sorted(int(i) for i in docs[0])


@dataclass
class EmbeddingChunks(_Chunks):
    """A context's chunks ranked by the cosine similarity of their embeddings to the query's, from a
    sentence-transformers model (``model``: a local folder or a hub id); the chunks are embedded once."""

    model: str = ""

    def __post_init__(self):
        super().__post_init__()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("rag.embedding_model needs the sentence-transformers package: pip install "
                              "'adaptbench[rag]'") from None
        try:
            self.encoder = SentenceTransformer(self.model)
        except (OSError, ValueError) as e:
            raise ConfigError(f"rag.embedding_model {self.model!r} could not be loaded as a sentence-transformers "
                              f"model: {e}") from None
        self.embedded = self._embed([self.text[a:b] for a, b in self.spans])

    def _embed(self, texts: list[str]):
        return self.encoder.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)

    def retrieve(self, query: str) -> list[int]:
        """The indices of the ``k`` chunks (all, if there are fewer) whose embeddings are most like the query's."""
        import torch

        scores = self.embedded @ self._embed([query])[0]
        return sorted(torch.topk(scores, min(self.k, len(self.spans))).indices.tolist())
