"""Every option for a long context on the same held-out queries (issue 27): truncation, BM25 retrieval and a
compressed KV cache (``cd.arms``) measured beside ICL, its cache and the distilled student."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from adaptbench.data.retrieval import Bm25Chunks, chunk_spans, joined
from adaptbench.errors import ConfigError
from adaptbench.methods.cd.generate import greedy_after
from adaptbench.models.interface import lm_parts
from adaptbench.scoring.core import PrefixCache, sequence_hidden
from adaptbench.scoring.kv_press import compress, kept_count
from adaptbench.sweep.identity import content_sha256

from .test_cost_curve import _config, _files
from .test_run import _records, _run

ARMS = ("[{kind: truncate, tokens: 16}, {kind: rag, chunk_tokens: 12, overlap: 2, k: 2}, "
        "{kind: kv_compressed, compression_ratio: 0.5}, {kind: rag, name: rag_all, chunk_tokens: 12, overlap: 0, k: 1000}, "
        "{kind: kv_compressed, name: kv_4bit, compression_ratio: null, bits: 4}]")

SERVING_BUDGET = 64 * 2**30


@pytest.fixture(scope="module")
def arms_run(tmp_path_factory, data_dir, tiny_models, embedder):
    folder = tmp_path_factory.mktemp("arms")
    _files(folder)
    shutil.copytree(embedder, folder / "embedder")  # a folder beside the config: found there
    arms = ARMS[:-1] + ", {kind: rag, name: rag_emb, chunk_tokens: 12, overlap: 2, k: 2, embedding_model: embedder}]"
    cd = (f"query_costs: 2, context_tokens: 48, arms: {arms}, checks: [{{max_words: 50}}], reply_tokens: 6, "
          f"serving: {{batch_sizes: [1, 3], repeats: 1, memory_budget: {SERVING_BUDGET}}}")
    result = _run(folder, data_dir, _config(tiny_models["llama"], cd))
    assert result.exit_code == 0, result.output
    [rec] = _records(folder)
    assert rec["status"] == "ok", rec.get("reason")
    return folder, rec


def test_every_arm_is_measured_on_the_same_queries(arms_run):
    folder, rec = arms_run
    info = rec["method_info"]
    names = {"truncate", "rag", "kv_compressed", "rag_all", "kv_4bit", "rag_emb"}
    assert set(info["arms"]) == names and info["arms"]["rag_emb"]["settings"]["embedding_model"].endswith("/embedder")
    # the embedding model's files are part of the run's identity, as the model's and the context's are
    assert rec["spec"]["resolved"]["files"]["cd.arms.rag_emb.embedding_model"] == content_sha256(str(folder / "embedder"))
    for name in names:
        held = info["arms"][name]["heldout"]
        assert held["kl_student"] >= 0 and held["positions"] == info["heldout"]["positions"]
        assert held["reply"]["positions"] == info["heldout"]["reply"]["positions"]
    # the same timed queries, in one order, for every path; the same judged inputs for every model
    assert set(info["query_costs"]) == {"icl", "icl_cached", "distilled", "no_context"} | names
    assert len(info["query_costs_queries"]) == 2 and all(p["n"] == 2 for p in info["query_costs"].values())
    assert {m for m in info["judged"]["checks"]["all checks"]} == {"base", "teacher", "student"} | names
    assert all(set(row) >= {"input", "teacher"} | names for row in info["judged"]["replies"])
    # every chunk retrieved is ICL's own prompt: the teacher's distributions and replies, up to float rounding
    assert info["arms"]["rag_all"]["heldout"]["reply"]["kl_student"] < 1e-5
    assert all(row["rag_all"] == row["teacher"] for row in info["judged"]["replies"])
    # what each reads: truncate its 16 tokens and the query, the pressed cache half the context's positions
    assert info["arms"]["truncate"]["tokens_per_query"] < info["query_costs"]["icl"]["tokens_per_query"]
    assert info["query_costs"]["kv_compressed"]["state_bytes"] * 2 == pytest.approx(
        info["query_costs"]["icl_cached"]["state_bytes"], rel=0.1)
    assert info["query_costs"]["kv_4bit"]["state_bytes"] < info["query_costs"]["icl_cached"]["state_bytes"] / 3



def test_the_report_has_the_decision_table_figures_and_a_recommendation(arms_run):
    import pandas as pd

    from adaptbench.report.pages import make_report

    folder, rec = arms_run
    rep = make_report(str(folder / "results" / "t"), queries=10, tolerance=1.0)
    table = pd.read_csv(rep.out_dir + "/decision.csv")
    options = {"icl", "icl_cached", "no_context", "truncate", "rag", "rag_all", "rag_emb", "kv_compressed", "kv_4bit",
               "distilled:lora"}
    assert set(table["option"]) == options
    info = rec["method_info"]
    for _, row in table.iterrows():  # the record's measured numbers, nothing else
        path = "distilled" if row["option"] == "distilled:lora" else row["option"]
        assert row["per_query_seconds"] == pytest.approx(info["query_costs"][path]["per_query_seconds"])
        assert row["quality_metric"] == "all checks pass"
    assert table.set_index("option").loc["kv_compressed", "state_bytes"] < table.set_index("option").loc[
        "icl_cached", "state_bytes"]
    names = {p.rsplit("/", 1)[1].rsplit(".", 1)[0] for p in rep.files}
    assert any(n.startswith("decision_quality_") for n in names) and any(n.startswith("decision_cumulative_") for n in names)
    md = (folder / "results" / "t" / "report" / "summary.md").read_text()
    assert md.index("## Recommendation") < md.index("## Which option for this context?")
    assert len(rep.recommendations) == 1 and "for 10 queries within 0.05" not in rep.recommendations[0]


# -- the parts, against their definitions ------------------------------------------------------------------

def test_knorm_keeps_the_keys_of_lowest_norm_per_head_and_streaming_the_sink_and_the_end():
    torch.manual_seed(0)
    keys, values = torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 3)
    cache = PrefixCache([(keys, values)], 10)
    pressed = compress(cache, 0.3, "knorm")
    assert pressed.length == kept_count(10, 0.3) == 7 and pressed.position == 10
    for h in range(2):
        norms = keys[0, h].norm(dim=-1)
        kept = sorted(norms.argsort()[:7].tolist())  # the definition: the 7 smallest norms, in position order
        assert torch.equal(pressed.layers[0][0][0, h], keys[0, h, kept])
        assert torch.equal(pressed.layers[0][1][0, h], values[0, h, kept])
    stream = compress(cache, 0.5, "streaming", sink=2)
    assert torch.equal(stream.layers[0][0][0, 0], keys[0, 0, [0, 1, 7, 8, 9]])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            compress(cache, bad)


def test_a_query_after_a_pressed_cache_continues_at_the_uncompressed_position(tiny_models, tokenizer):
    """Positions go on from the context's length, not the cache's: a cache that evicted nothing reads as the
    full one, and one that evicted gives the states of a forward at those positions over the kept entries."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    parts = lm_parts(model)
    prefix, query = list(range(5, 45)), [50, 51, 52]
    full = PrefixCache.encode(parts, prefix, shared=False)
    with torch.inference_mode():
        reference = sequence_hidden(parts, [prefix + query], 0)[0][-3:]
        kept_all = compress(full, 1e-6)  # evicts floor(40 * 1e-6) = 0 positions
        assert kept_all.length == 40
        assert torch.allclose(sequence_hidden(parts, [query], 0, kept_all)[0], reference, atol=1e-5)
        pressed = compress(full, 0.5, "streaming", sink=4)
        shifted = PrefixCache(pressed.layers, pressed.length, shared=False)  # positions from 20: wrong
        got, wrong = (sequence_hidden(parts, [query], 0, c)[0] for c in (pressed, shifted))
    assert not torch.allclose(got, wrong, atol=1e-4)


def test_greedy_after_a_cache_is_generate_greedy(tiny_models, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    parts, ids = lm_parts(model), list(range(10, 30))
    with torch.inference_mode():
        expected = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, 20, dtype=torch.long),
                                  max_new_tokens=8, do_sample=False, pad_token_id=0)[0, 20:].tolist()
    assert greedy_after(parts, None, ids, 8, set()) == expected
    cache = PrefixCache.encode(parts, ids[:15], shared=False)
    assert greedy_after(parts, cache, ids[15:], 8, set()) == expected
    stop = expected[-1]  # a stop token ends the reply after its first occurrence, kept
    assert greedy_after(parts, None, ids, 8, {stop}) == expected[:expected.index(stop) + 1]



def test_greedy_batch_gives_each_row_what_it_gives_alone(tiny_models, monkeypatch):
    """Left-padded rows of different lengths, after no cache, a cache and a compressed one (positions beyond its
    length), with per-row limits and a stop token: each row's reply is its batch-1 reply, token for token."""
    from transformers import AutoModelForCausalLM

    from adaptbench.methods.cd.generate import greedy_batch, left_padded

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    parts = lm_parts(model)
    seqs = [list(range(40, 40 + n)) for n in (3, 11, 6, 1, 9)]
    limits = [8, 5, 0, 8, 8]
    full = PrefixCache.encode(parts, list(range(100, 140)), shared=False)
    for cache in (None, full, compress(full, 0.5, "knorm")):
        alone = [greedy_after(parts, cache, s, n, set()) if n else [] for s, n in zip(seqs, limits)]
        assert greedy_batch(parts, cache, seqs, limits, set(), batch_size=4) == alone
        with monkeypatch.context() as m:  # a cache too large to copy for many rows: one row at a time
            m.setattr("adaptbench.methods.cd.generate.COPIES_BYTES", 1)
            assert greedy_batch(parts, cache, seqs, limits, set()) == alone
        stop = {alone[0][1]}  # a stop token ends only the rows that write it, kept
        assert greedy_batch(parts, cache, seqs, limits, stop) == [
            greedy_after(parts, cache, s, n, stop) if n else [] for s, n in zip(seqs, limits)]
        # the step that decides: each row's last state in the padded batch is its state alone (a tiny random
        # model copies its last token, so the replies alone would not show a wrong position or mask)
        past, step = left_padded(parts, cache, seqs)
        with torch.inference_mode():
            batch = parts.backbone(**step, use_cache=True, **{parts.cache_kwarg: past}).last_hidden_state[:, -1]
            for row, s in zip(batch, seqs):
                assert torch.allclose(row, sequence_hidden(parts, [s], 0, cache)[0][-1], atol=1e-5)


TEXT = ("The harbour closed at dusk. Boats waited in rows beside the pier.\\n" * 3
        + "The lighthouse keeper counted 47 gulls on the roof that morning.\\n"
        + "Nets dried on the wall while the tide went out.\\n" * 3)


def test_chunks_cover_the_text_and_bm25_finds_the_chunk_with_the_words(tokenizer):
    spans = chunk_spans(tokenizer, TEXT, 12, 3)
    assert spans[0][0] == 0 and spans[-1][1] == len(TEXT)
    assert all(b0 <= a1 for (_, a1), (b0, _) in zip(spans, spans[1:]))  # touching or overlapping
    assert joined(TEXT, spans, " | ") == TEXT
    assert joined(TEXT, chunk_spans(tokenizer, TEXT, 12, 0), " | ") == TEXT  # touching chunks join without a gap
    assert joined(TEXT, [spans[0], spans[3]], " | ") == TEXT[slice(*spans[0])] + " | " + TEXT[slice(*spans[3])]
    index = Bm25Chunks(TEXT, spans, 1)
    assert "gulls" in TEXT[slice(*spans[index.retrieve("How many gulls did the keeper count?")[0]])]
    assert Bm25Chunks(TEXT, spans, 2).context_for("gulls lighthouse").count(" | ") == 0  # one separator default
    for bad, match in (((12, 12), "overlap"), ((12, -1), "overlap")):
        with pytest.raises(ConfigError, match=match):
            chunk_spans(tokenizer, TEXT, *bad)
    with pytest.raises(ConfigError, match="k is the number of chunks"):
        Bm25Chunks(TEXT, spans, 0)


@pytest.fixture(scope="module")
def embedder(tokenizer, tmp_path_factory) -> str:
    """A tiny random BERT with the test tokenizer and mean pooling, saved as a sentence-transformers model."""
    import copy

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("embedder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(folder / "bert")
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(folder / "bert")
    word = Transformer(str(folder / "bert"))
    SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")]).save(str(folder / "st"))
    return str(folder / "st")


def test_embedding_retrieval_ranks_chunks_by_cosine_similarity(tokenizer, embedder):
    """EmbeddingChunks against its definition: the k chunks whose normalised embeddings have the largest dot
    product with the query's, each text embedded alone, in context order; every chunk gives the whole text."""
    from sentence_transformers import SentenceTransformer

    from adaptbench.data.retrieval import EmbeddingChunks

    spans = chunk_spans(tokenizer, TEXT, 12, 3)
    model = SentenceTransformer(embedder)
    alone = [torch.nn.functional.normalize(torch.as_tensor(model.encode(TEXT[a:b])), dim=0) for a, b in spans]
    for query in ("How many gulls did the keeper count?", "nets on the wall", "boats"):
        q = torch.nn.functional.normalize(torch.as_tensor(model.encode(query)), dim=0)
        scores = torch.stack([c @ q for c in alone])
        for k in (1, 3):
            assert EmbeddingChunks(TEXT, spans, k, model=embedder).retrieve(query) == sorted(
                scores.topk(k).indices.tolist())
    assert EmbeddingChunks(TEXT, spans, len(spans) + 5, model=embedder).context_for("gulls") == TEXT
    with pytest.raises(ConfigError, match="rag.embedding_model .*could not be loaded"):
        EmbeddingChunks(TEXT, spans, 2, model=str(Path(embedder).parent / "missing"))
    with pytest.raises(ConfigError, match="k is the number of chunks"):
        EmbeddingChunks(TEXT, spans, 0, model=embedder)


def test_rag_with_every_chunk_reads_the_prompt_icl_reads(tokenizer):
    from adaptbench.config.schema import PromptSpec
    from adaptbench.data import get_task
    from adaptbench.methods.cd.arms import RagArm, TextArm
    from adaptbench.prompts.prompt import PromptEncoder
    from adaptbench.sweep.inputs import resolve_prompt

    task = get_task("rte")
    encoder = PromptEncoder(tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    query = "How many gulls were on the roof?"
    arm = TextArm(RagArm(kind="rag", chunk_tokens=10, overlap=2, k=1000), encoder, TEXT, 2048)
    reads = encoder.read_after(TEXT, [query])
    ids, start = arm.reading(query)
    assert ids == reads.prefix + reads.suffixes[0] and ids[start:] == reads.own(0)
    with pytest.raises(ConfigError, match="larger than the model's window"):
        TextArm(RagArm(kind="rag", chunk_tokens=4096), encoder, TEXT, 2048)


def _decision(**options):
    from adaptbench.measure.breakeven import PathCost
    from adaptbench.report.decision import Decision, Option

    d = Decision("m", "c.txt", 1000, "all checks pass")
    for name, (quality, setup, per_query) in options.items():
        name = name.replace("__", ":")
        d.options[name] = Option(name, quality, cost=PathCost(name, setup, per_query, 0))
    return d


BASE = {"icl": (0.80, 0.0, 1.0), "icl_cached": (0.80, 50.0, 0.2), "distilled__lora": (0.79, 1000.0, 0.05),
        "no_context": (0.20, 0.0, 0.04)}


@pytest.mark.parametrize("extra, queries, winner", [
    ({}, 10, "icl"),  # nothing else pays within 10 queries
    ({}, 100, "icl_cached"),  # 50 + 20 < 100
    ({}, 10_000, "distilled:lora"),  # 1000 + 500 < 50 + 2000
    ({"rag": (0.78, 1.0, 0.1)}, 10, "rag"),
    ({"truncate": (0.76, 0.0, 0.3), "rag": (0.50, 1.0, 0.1)}, 10, "truncate"),  # rag loses 0.30: not allowed
    ({"kv_compressed": (0.77, 20.0, 0.02)}, 10_000, "kv_compressed"),
    ({"no_context": (0.80, 0.0, 0.04)}, 10, "no_context"),  # the context is not needed at all
])
def test_the_recommendation_is_the_cheapest_option_within_the_tolerance(extra, queries, winner):
    from adaptbench.report.decision import recommend

    rec = recommend(_decision(**{**BASE, **extra}), queries, tolerance=0.05)
    assert rec.choice.name == winner, rec.reason
    assert rec.reason.startswith(f"{winner}: ")


def test_no_option_is_recommended_on_an_unmeasured_quality():
    from adaptbench.report.decision import recommend

    rec = recommend(_decision(**{**BASE, "rag": (None, 0.0, 0.001)}), 10, 0.05)
    assert rec.choice.name == "icl" and "rag costs" in rec.reason and "its quality was not measured" in rec.reason
    rec = recommend(_decision(**{**BASE, "icl": (None, 0.0, 1.0)}), 10, 0.05)
    assert rec.choice is None and "ICL's quality was not measured" in rec.reason
    losing = recommend(_decision(**{**BASE, "rag": (0.5, 1.0, 0.1)}), 10, 0.05)
    assert "rag costs 2 s but loses 0.30" in losing.reason and "distilled:lora never pays" not in losing.reason


def test_bad_arm_settings_are_named(tmp_path, data_dir, tiny_models):
    from adaptbench.config.expand import load_sweep

    _files(tmp_path)
    for arms, message in (("[{kind: rag, k: 0}]", "k"), ("[{kind: kv_compressed, compression_ratio: 1.5}]",
                                                          "compression_ratio"),
                          ("[{kind: rag}, {kind: rag, k: 8}]", "two arms are named 'rag'"),
                          ("[{kind: rag, chunk_tokens: 8}]", "overlap \\(16\\) must be less than chunk_tokens"),
                          ("[{kind: kv_compressed, compression_ratio: null}]", "neither compresses"),
                          ("[{kind: summarize}]", "kind")):
        path = tmp_path / "sweep.yaml"
        path.write_text(_config(tiny_models["llama"], f"arms: {arms}"))
        with pytest.raises(Exception, match=message) as e:
            load_sweep(str(path))
        assert "cd.arms" in str(e.value) or "arms" in str(e.value)


def test_an_api_models_price_per_query_comes_from_the_measured_tokens(arms_run):
    import pandas as pd

    from adaptbench.report.decision import Prices
    from adaptbench.report.pages import make_report

    folder, rec = arms_run
    info = rec["method_info"]
    rep = make_report(str(folder / "results" / "t"), out_dir=str(folder / "priced"),
                      prices=Prices(prompt=3.0, completion=15.0, cached_share=0.1))
    table = pd.read_csv(folder / "priced" / "decision.csv").set_index("option")
    replies = info["judged"]["reply_tokens_mean"]
    costs = info["query_costs"]
    assert table.loc["icl", "api_price_per_query"] == pytest.approx(
        (costs["icl"]["tokens_per_query"] * 3.0 + replies["teacher"] * 15.0) / 1000)
    cached = (costs["icl_cached"]["tokens_per_query"] + info["shared_prefix_tokens"] * 0.1) * 3.0
    assert table.loc["icl_cached", "api_price_per_query"] == pytest.approx((cached + replies["teacher"] * 15.0) / 1000)
    assert table.loc["rag", "api_price_per_query"] == pytest.approx(
        (costs["rag"]["tokens_per_query"] * 3.0 + replies["rag"] * 15.0) / 1000)
    for local_only in ("kv_compressed", "distilled:lora"):  # they need the model's weights or cache
        assert pd.isna(table.loc[local_only, "api_price_per_query"])
    assert "API price / 1k queries" in rep.decision.columns


def test_an_option_that_scores_higher_than_the_cheapest_acceptable_one_is_named():
    from adaptbench.report.decision import recommend

    rec = recommend(_decision(**{**BASE, "icl": (0.0, 0.0, 1.0), "icl_cached": (0.0, 50.0, 0.2),
                                 "distilled__lora": (0.0, 1000.0, 0.05), "no_context": (0.0, 0.0, 0.04),
                                 "rag": (0.5, 1.0, 0.1)}), 100, 0.05)
    assert rec.choice.name == "no_context" and "; rag scores higher, 0.50 vs 0.00, at 11 s" in rec.reason


def test_a_quantized_cache_is_its_dequantized_values_in_a_quarter_of_the_bytes_or_less(tiny_models):
    """4-bit keys/values in groups of 64 with a float scale and shift: at most ~1/4 of float32's bytes plus the
    scales; a query against it reads exactly the dequantized cache; the values stay close to the originals."""
    from transformers import AutoModelForCausalLM

    from adaptbench.scoring.kv_press import QuantizedPrefix, quantize

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    parts = lm_parts(model)
    prefix, query = list(range(5, 133)), [50, 51, 52]
    full = PrefixCache.encode(parts, prefix, shared=False)
    packed = quantize(full, 4)
    assert isinstance(packed, QuantizedPrefix) and packed.length == full.length == packed.position
    assert packed.nbytes < full.nbytes / 4 + full.nbytes / 8  # int4 data + a scale and shift per 64 values
    dense = PrefixCache(packed.dense_layers(), packed.length, shared=False)
    for (k, v), (dk, dv) in zip(full.layers, dense.layers):
        assert (dk - k).abs().max() <= 0.2 * k.abs().max() and (dv - v).abs().max() <= 0.2 * v.abs().max()
        assert not torch.equal(dk, k)  # it was quantized
    with torch.inference_mode():
        got, expected = (sequence_hidden(parts, [query], 0, c)[0] for c in (packed, dense))
    assert torch.equal(got, expected)
    with pytest.raises(ConfigError, match="2 or 4 bits"):
        quantize(full, 3)


def test_students_of_one_kind_stay_apart_and_seeds_are_decided_apart(arms_run):
    from adaptbench.report.decision import decisions
    from adaptbench.store.results import read_results

    folder, rec = arms_run
    [record] = read_results(str(folder / "results" / "t")).records
    twin = record.model_copy(update={"run_id": "f" * 16})
    other_seed = record.model_copy(update={"run_id": "e" * 16, "spec": {**record.spec, "data_seed": 1}})
    found = decisions([record, twin, other_seed])
    assert [d.context for d in found] == ["context.txt (seed 0)", "context.txt (seed 1)"]
    assert {n for n in found[0].options if n.startswith("distilled")} == {
        f"distilled:lora:{record.run_id[:8]}", "distilled:lora:ffffffff"}
    assert {n for n in found[1].options if n.startswith("distilled")} == {"distilled:lora"}


def test_serving_is_measured_for_the_cache_the_arms_and_the_student(arms_run):
    _, rec = arms_run
    serving = rec["method_info"]["serving"]
    assert serving["batch_sizes"] == [1, 3] and serving["threads"] >= 1 and serving["queries"] == 2
    assert set(serving["paths"]) == {"icl_cached", "kv_compressed", "kv_4bit", "distilled:lora", "distilled:lora_merged"}
    for name, regimes in serving["paths"].items():
        assert set(regimes) == {"shared", "per_user"}
        for regime, m in regimes.items():
            sizes = ["1"] if (name, regime) == ("distilled:lora_merged", "per_user") else ["1", "3"]
            assert list(m["batch"]) == sizes
            assert all(b["queries_per_second"] > 0 and b["transient_bytes"] >= 0 for b in m["batch"].values())
            assert m["within_budget"]["batch"] == int(sizes[-1])
    icl = serving["paths"]["icl_cached"]["per_user"]
    assert icl["users_built"] == 3 and icl["users_measured"] == 2
    # shapes: the 4-bit cache holds well under the full cache's bytes; a merged model a whole model's
    assert serving["paths"]["kv_4bit"]["per_user"]["per_user_bytes_shapes"] < icl["per_user_bytes_shapes"] / 3
    merged = serving["paths"]["distilled:lora_merged"]["per_user"]
    assert merged["per_user_bytes_shapes"] > 50 * serving["paths"]["distilled:lora"]["per_user"]["per_user_bytes_shapes"]
    assert serving["paths"]["icl_cached"]["shared"]["within_budget"]["users"] is None
    assert rec["costs"]["serving"]["seconds"] > 0


def test_the_report_has_the_serving_table_and_its_ratios(arms_run):
    import pandas as pd

    from adaptbench.report.pages import make_report

    folder, rec = arms_run
    rep = make_report(str(folder / "results" / "t"), out_dir=str(folder / "serving-report"))
    table = pd.read_csv(rep.out_dir + "/serving.csv")
    assert len(table) == 10 and set(table["regime"]) == {"shared", "per_user"}
    paths = rec["method_info"]["serving"]["paths"]
    for _, row in table.iterrows():  # the record's measured numbers
        m = paths[row["option"]][row["regime"]]
        assert row["qps_batch_1"] == pytest.approx(m["batch"]["1"]["queries_per_second"])
        assert row["per_user_bytes_measured"] == pytest.approx(m["per_user_bytes_measured"])
    text = open(rep.out_dir + "/summary.md").read()
    assert "## Serving many users" in text and "vs icl_cached per user" in text
    assert "Serving many users" in open(rep.out_dir + "/report.html").read()
