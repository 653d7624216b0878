"""Stage 07: likelihood scoring, the suites' adapters, the sanity suite and resuming."""

import json
import shutil

import numpy as np
import pytest
import torch

from speechlm_utils import evaluate
from speechlm_utils.config import TrainConfig
from speechlm_utils.model import build_speech_lm
from speechlm_utils.tokenizer import SpeechTokenizer


@pytest.fixture(scope="module")
def tok(text_tokenizer):
    return SpeechTokenizer(text_tokenizer)


@pytest.fixture(scope="module")
def lm(tiny_models, tok):
    torch.manual_seed(0)
    return build_speech_lm(tiny_models, tok.layout).eval()


def clip(tok, groups, seed, text=True):
    """A clip's ids: random codes, and a few words in its text slots."""
    codes = np.random.default_rng(seed).integers(0, 2048, (4, groups * 5))
    from speechlm_utils.words import Word

    words = [Word(" hello", 0.1, 0.4), Word(" world", 0.5, 0.9)] if text else []
    return tok.encode(codes, words).ids


def by_hand(lm, lay, ids) -> list:
    """A clip's semantic sum and count, all-codebook sum and count, from transformers' own
    logits over the whole vocabulary, one position at a time."""
    with torch.no_grad():
        logits = lm(torch.as_tensor(ids)[None]).logits[0].double()
    kinds = lay.kinds(ids.size)
    sem = total = 0.0
    n_sem = n_all = 0
    for p in range(1, ids.size):
        if kinds[p] == 0:
            continue  # text slots are context, not scored
        lo, hi = lay.id_range(int(kinds[p]))
        logp = logits[p - 1, lo:hi].log_softmax(-1)[ids[p] - lo].item()
        total, n_all = total + logp, n_all + 1
        if kinds[p] == 1:
            sem, n_sem = sem + logp, n_sem + 1
    return [sem, n_sem, total, n_all]


def test_a_clips_score_is_its_audio_tokens_log_likelihood_by_hand(lm, tok):
    lay = tok.layout
    ids = clip(tok, 3, seed=1)
    got = evaluate.clip_logprobs(lm, lay, [ids])[0]
    hand = by_hand(lm, lay, ids)
    assert hand[1::2] == [15, 60]
    np.testing.assert_allclose(got, hand, rtol=1e-5)


def test_a_pairs_verdict_equals_a_hand_computation_of_its_log_likelihoods(lm, tok, tmp_path):
    lay = tok.layout
    pair = [clip(tok, 3, seed=4), clip(tok, 2, seed=5)]  # clips of different lengths
    items = [evaluate.Item("right-first", [evaluate.Clip(b"")] * 2, correct=0),
             evaluate.Item("right-second", [evaluate.Clip(b"")] * 2, correct=1)]  # fmt: skip
    lines = evaluate.score_items(lm, lay, [pair, pair], items, tmp_path / "s.jsonl",
                                 progress=False)  # fmt: skip
    for variant in evaluate.VARIANTS:
        clips = pair if variant == "text" else [evaluate.speech_only(c, lay) for c in pair]
        hand = [by_hand(lm, lay, c) for c in clips]
        for span, (s, n) in zip(evaluate.SPANS, ((0, 1), (2, 3))):
            means = [h[s] / h[n] for h in hand]  # mean log-likelihood per audio token
            assert abs(means[0] - means[1]) > 1e-3  # no near-tie: the verdict is decided
            for line, correct in zip(lines, (0, 1)):
                got = line[variant][span]
                np.testing.assert_allclose(got["means"], means, rtol=1e-5)
                assert got["right"] == (means[correct] > means[1 - correct])
            assert lines[0][variant][span]["right"] != lines[1][variant][span]["right"]


def test_explaining_an_item_applies_the_scoring_tie_rule(lm, tok, codec):
    wav = 0.1 * np.random.default_rng(6).standard_normal(24_000).astype(np.float32)
    same = evaluate.Clip(wav, 24_000)
    item = evaluate.Item("tie", [same, same], correct=0)  # two equal clips: a tie
    explained = evaluate.explain_item(lm, tok, codec, item)
    means = [c["text"]["semantic"] for c in explained["clips"]]
    assert means[0] == pytest.approx(means[1])
    assert explained["text"] == {"semantic": False, "all": False}  # argmax would say right
    assert evaluate.right_wins([-1.0, -2.0], 0) and not evaluate.right_wins([-1.0, -1.0], 0)


def test_a_clip_is_scored_on_its_own_frames_not_the_padding_to_a_whole_group(lm, tok, codec):
    wav = 0.1 * np.random.default_rng(3).standard_normal(int(1.1 * 24_000)).astype(np.float32)
    (ids,) = evaluate.encode_clips([evaluate.Clip(wav, 24_000)], codec, tok)
    frames = int(np.ceil(wav.size / codec.frame_samples))  # 14: 2 whole groups and 4 frames
    lay = tok.layout
    assert frames == 14 and ids.size == 2 * lay.group_len + lay.text_slots_per_group + 4 * 4
    sums = evaluate.clip_logprobs(lm, lay, [ids])[0]
    assert (sums[1], sums[3]) == (frames, frames * lay.num_codebooks)  # not the 15th, silent


def test_a_batch_with_no_gpu_memory_is_halved_and_scores_the_same(lm, tok, monkeypatch):
    clips = [clip(tok, g, seed=g) for g in (2, 3, 2, 1, 3, 2)]
    alone = evaluate.clip_logprobs(lm, tok.layout, clips, max_batch_tokens=10_000)
    real, sizes = evaluate.audio_logprobs, []

    def small_gpu(core, weight, layout, ids):
        sizes.append(ids.shape[0])
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(core, weight, layout, ids)

    monkeypatch.setattr(evaluate, "audio_logprobs", small_gpu)
    np.testing.assert_allclose(evaluate.clip_logprobs(lm, tok.layout, clips, 10_000), alone,
                               rtol=1e-5, atol=1e-4)  # fmt: skip
    assert sizes[:3] == [6, 3, 1] and max(sizes[3:]) <= 2  # halved, then the budget kept low


def test_batch_composition_never_changes_a_clips_score(lm, tok):
    clips = [clip(tok, g, seed=g) for g in (1, 4, 2, 6, 3)]
    alone = np.concatenate([evaluate.clip_logprobs(lm, tok.layout, [c]) for c in clips])
    for budget in (22 * 6, 22 * 12, 10_000):
        together = evaluate.clip_logprobs(lm, tok.layout, clips, max_batch_tokens=budget)
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-4)


def test_an_item_is_right_only_when_its_right_clip_scores_highest():
    scores = np.array([[-2.0, 10, -30.0, 40], [-3.0, 10, -20.0, 40]])  # sums and counts
    verdict = evaluate.item_verdicts(scores, correct=0)
    assert verdict["semantic"]["right"] and not verdict["all"]["right"]
    assert verdict["semantic"]["means"] == [-0.2, -0.3]
    tie = evaluate.item_verdicts(np.array([[-1.0, 1, -1.0, 1]] * 2), correct=0)
    assert not tie["semantic"]["right"]  # a tie is not a win


def test_speech_only_pads_every_text_slot_and_keeps_the_audio(tok):
    ids = clip(tok, 3, seed=2)
    lay = tok.layout
    out = evaluate.speech_only(ids, lay)
    text = lay.kinds(ids.size) == 0
    assert (out[text] == lay.text_pad_id).all() and (ids[text] != lay.text_pad_id).any()
    assert (out[~text] == ids[~text]).all()


def _audio_cell(seconds, freq, rate=16_000):
    import io

    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return {"bytes": buf.getvalue(), "path": None}


def test_a_suite_saved_in_the_hub_schema_loads_through_the_hub_adapter(tmp_path, monkeypatch):
    import datasets

    rows = {"id": ["a", "b"], "positive": [_audio_cell(1.0, 220), _audio_cell(0.5, 330)],
            "negative": [_audio_cell(0.8, 440), _audio_cell(0.6, 550)],
            "positive_transcription": ["x", "y"], "negative_transcription": ["z", "w"]}
    data = datasets.Dataset.from_dict(rows)  # sLM21's schema on the hub (speed/sBLIMP)
    for col in ("positive", "negative"):
        data = data.cast_column(col, datasets.Audio(sampling_rate=16_000))
    data.save_to_disk(str(tmp_path / "local"))
    local = evaluate.load_suite("sblimp", tmp_path / "local")
    asked = []

    def hub(name, subset=None, split=None):  # what the hub would serve: the same table
        asked.append((name, subset, split))
        return datasets.load_from_disk(str(tmp_path / "local"))

    monkeypatch.setattr(datasets, "load_dataset", hub)
    remote = evaluate.load_suite("sblimp")
    assert asked == [("speed/sBLIMP", None, "train")]
    for items in (local, remote):
        assert [it.id for it in items] == ["a", "b"] and all(it.correct == 0 for it in items)
        wav = items[0].clips[0].load(24_000)  # decoded and resampled by ffmpeg
        assert abs(wav.size - 24_000) <= 1 and abs(np.abs(wav).max() - 0.3) < 0.02
        assert items[1].clips[1].load(24_000).size == pytest.approx(0.6 * 24_000, abs=1)


def test_item_ids_repeated_in_a_data_set_stay_apart_with_or_without_a_limit(tmp_path):
    import datasets

    rows = {"id": [7, 7, 8], "positive": [_audio_cell(0.5, 220)] * 3,
            "negative": [_audio_cell(0.5, 330)] * 3}  # e.g. one sentence pair in two voices
    data = datasets.Dataset.from_dict(rows)
    for col in ("positive", "negative"):
        data = data.cast_column(col, datasets.Audio(sampling_rate=16_000))
    data.save_to_disk(str(tmp_path / "local"))
    assert [it.id for it in evaluate.load_suite("sblimp", tmp_path / "local")] == \
        ["7@0", "7@1", "8"]  # fmt: skip
    assert [it.id for it in evaluate.load_suite("sblimp", tmp_path / "local", limit=1)] == ["7@0"]


def test_an_encoded_suite_made_otherwise_is_encoded_again(tok, tmp_path, monkeypatch):
    calls = []

    def fake_encode(clips, codec, tokenizer, aligner=None, batch_size=16, errors=None):
        calls.append(len(clips))
        return [np.arange(3, dtype=np.int64) for _ in clips]

    monkeypatch.setattr(evaluate, "encode_clips", fake_encode)
    items = [evaluate.Item(f"i{k}", [evaluate.Clip(b"")] * 2) for k in range(5)]
    store = evaluate.EncodedSuite(tmp_path / "enc", block=2)
    store.build(items, None, tok, key={"mimi": "a"}, progress=False)
    store.build(items, None, tok, key={"mimi": "a"}, progress=False)
    assert calls == [4, 4, 2]  # three blocks, encoded once
    store.build(items[:3], None, tok, key={"mimi": "a"}, progress=False)
    assert calls[3:] == []  # a limit reads the whole suite's blocks
    store.build(items, None, tok, key={"mimi": "b"}, progress=False)
    assert calls[3:] == [4, 4, 2]  # another Mimi: every block again
    calls.clear()
    tasks = [evaluate.Item(f"{t}/{k}", [evaluate.Clip(b"")] * 2, subset=t)
             for t in ("gender", "room") for k in range(3)]  # SALMon-like: 3 items per task
    limited = [it for it in tasks if it.id.endswith(("/0", "/1"))]  # --limit 2 per task
    store = evaluate.EncodedSuite(tmp_path / "tasks", block=2)
    store.build(limited, None, tok, key={"mimi": "a"}, progress=False)
    assert calls == [4, 4]  # block 0 of each task
    whole = store.build(tasks, None, tok, key={"mimi": "a"}, progress=False)
    assert calls[2:] == [2, 2] and len(whole) == 6  # only each task's second block
    store.build(limited, None, tok, key={"mimi": "a"}, progress=False)
    assert calls[4:] == []  # and a limit after the whole suite encodes nothing


def test_a_metric_group_cut_short_is_not_done_and_a_rerun_replaces_it(tmp_path):
    row = {"checkpoint": "final", "step": 1, "suite": "demo", "value": 0.5, "of": 2}
    lines = [{**row, "metric": "acc_a"}]
    assert evaluate.completed(lines) == set()  # stopped before its second metric
    mine = {"weights": "w1", "source": "s1"}
    assert evaluate.completed([{**r, **mine, "of": 1} for r in lines]) == \
        {("final", "demo", None, "w1", "s1")}  # fmt: skip
    lines += [{**row, "metric": "acc_a", "value": 0.6}, {**row, "metric": "acc_b"},
              {**row, "metric": "acc_a", "limit": 10, "of": 1}]  # fmt: skip
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = evaluate.read_eval(tmp_path)
    assert [(r["metric"], r["value"], r.get("limit")) for r in rows] == \
        [("acc_a", 0.6, None), ("acc_b", 0.5, None), ("acc_a", 0.5, 10)]  # fmt: skip
    assert evaluate.completed(rows) == {("final", "demo", None, None, None),
                                        ("final", "demo", 10, None, None)}  # fmt: skip
    (table,) = evaluate.pivot(rows, "demo")
    assert (table["a"], table["b"]) == (60.0, 50.0)  # the whole suite's, not the quick look's


def test_the_demo_suite_ships_with_its_transcripts():
    items = evaluate.load_suite("demo")
    assert len(items) >= 20 and {it.subset for it in items} >= {"lexical", "syntax", "story"}
    assert sum(p.stat().st_size for p in evaluate.demo_suite_dir().rglob("*")) < 1_000_000
    first = items[0].clips[0]
    assert first.words and first.words[0].start_s == pytest.approx(0.3)


def test_scoring_resumes_where_it_stopped(lm, tok, tmp_path, monkeypatch):
    items = [evaluate.Item(f"i{k}", [evaluate.Clip(b"")] * 2) for k in range(5)]
    encoded = [[clip(tok, 2, seed=10 + k), clip(tok, 2, seed=20 + k)] for k in range(5)]
    out = tmp_path / "suite.jsonl"
    parts = dict(max_batch_tokens=88, forwards_per_write=2)  # 2 items (88 tokens each) a part
    once = evaluate.score_items(lm, tok.layout, encoded, items, tmp_path / "once.jsonl",
                                progress=False, **parts)  # fmt: skip
    real, calls = evaluate.clip_logprobs, []

    def stop_after_two_batches(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:  # two variants per batch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "clip_logprobs", stop_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        evaluate.score_items(lm, tok.layout, encoded, items, out, progress=False, **parts)
    assert len(list(evaluate.read_jsonl(out))) == 4
    calls.clear()
    monkeypatch.setattr(evaluate, "clip_logprobs", real)
    again = evaluate.score_items(lm, tok.layout, encoded, items, out, progress=False, **parts)
    assert again == once and len(list(evaluate.read_jsonl(out))) == 5
    other = evaluate.score_items(lm, tok.layout, encoded, items, out, progress=False,
                                 key={"weights": "rewritten"}, **parts)  # fmt: skip
    assert len(list(evaluate.read_jsonl(out))) == 10  # scored again under another key
    assert all(r["key"] == {"weights": "rewritten"} for r in other)


def test_short_clips_fill_the_token_budget_not_a_fixed_number_of_items(lm, tok, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    items = [evaluate.Item(f"i{k}", [evaluate.Clip(b"")] * 2) for k in range(100)]
    encoded = [[clip(tok, 1, seed=k), clip(tok, 1, seed=100 + k)] for k in range(100)]
    real, rows = evaluate.audio_logprobs, []

    def count(core, weight, layout, ids):
        rows.append(ids.shape[0])
        return real(core, weight, layout, ids)

    monkeypatch.setattr(evaluate, "audio_logprobs", count)
    evaluate.score_items(lm, tok.layout, encoded, items, tmp_path / "s.jsonl", variants=("text",),
                         max_batch_tokens=200 * 22, progress=False)  # fmt: skip
    assert rows == [200]  # all 200 clips of 22 tokens in one forward of the budget


@pytest.mark.pipeline  # it trains and reads the notebooks' run
def test_the_demo_run_passes_its_sanity_suite_and_evaluation_resumes(tiny_models, tmp_path):
    from speechlm_utils.config import TokenizeConfig
    from speechlm_utils.preprocess import ensure_tokens
    from speechlm_utils.train import ensure_run, notebook_run_dir

    cfg = TrainConfig.from_profile("tiny")
    trained = ensure_run(cfg, tiny_models, notebook_run_dir(cfg))
    tokens = ensure_tokens(TokenizeConfig.from_profile("tiny"), tiny_models)
    run = tmp_path / "run"  # a copy: the notebooks' run stays as they left it
    run.mkdir()
    shutil.copy(trained / "run.json", run / "run.json")
    shutil.copytree(trained / "final", run / "final")
    result = evaluate.evaluate_run(run, ["sanity", "loss"], tokens_root=tokens,
                                   models=tiny_models, progress=False)  # fmt: skip
    got = {r["metric"]: r["value"] for r in result.rows if r["suite"] == "sanity"}
    assert got["acc_text_semantic"] == 1.0 and got["acc_text_all"] == 1.0
    loss = {r["metric"]: r["value"] for r in result.rows if r["suite"] == "loss"}
    assert set(loss) >= {"loss_text", "loss_pad", "loss_semantic", "loss_acoustic"}
    assert loss["ppl_semantic"] == pytest.approx(np.exp(loss["loss_semantic"]))
    lines = (run / "eval.jsonl").read_text().splitlines()
    again = evaluate.evaluate_run(run, ["sanity", "loss"], tokens_root=tokens,
                                  models=tiny_models, progress=False)  # fmt: skip
    assert (run / "eval.jsonl").read_text().splitlines() == lines  # nothing run twice
    assert again.rows == [json.loads(x) for x in lines]

    weights = run / "final" / "weights.pt"  # a resumed training rewrites final/
    torch.save(torch.load(weights, weights_only=True), weights)
    rewritten = evaluate.evaluate_run(run, ["sanity"], tokens_root=tokens, models=tiny_models,
                                      progress=False)  # fmt: skip
    new = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()[len(lines):]]
    assert {r["suite"] for r in new} == {"sanity"} and len(new) == len(got)  # scored again
    assert new[0]["weights"] != json.loads(lines[0])["weights"]
    assert [r for r in rewritten.rows if r["suite"] == "sanity"] == new  # the latest rows only
    assert evaluate.pivot(rewritten.rows, "sanity")[0]["text_semantic"] == 100.0
    lines = (run / "eval.jsonl").read_text().splitlines()

    empty = tmp_path / "moved"  # tokens that moved (or another run's): an error, no score
    with pytest.raises(FileNotFoundError, match="--tokens"):
        evaluate.evaluate_run(run, ["consistency"], tokens_root=empty, models=tiny_models,
                              progress=False)  # fmt: skip
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    for suite in ("loss", "sanity", "consistency"):
        with pytest.raises(ValueError, match=f"{empty}.*--tokens"):
            evaluate.evaluate_run(run, [suite], tokens_root=empty, models=tiny_models,
                                  progress=False)  # fmt: skip
    assert (run / "eval.jsonl").read_text().splitlines() == lines

    said = evaluate.evaluate_run(run, ["consistency"], tokens_root=tokens, models=tiny_models,
                                 consistency_prompts=2, progress=False)  # fmt: skip
    out = evaluate.read_consistency(run)
    assert len(out["replies"]) == 2 and all(set(r) == {"written", "heard", "wer"}
                                            for r in out["replies"])  # fmt: skip
    words = [max(1, len(r["written"].split())) for r in out["replies"]]
    assert out["wer"] == pytest.approx(np.dot(words, [r["wer"] for r in out["replies"]])
                                       / sum(words))  # weighted by the words written
    (wer,) = [r for r in said.rows if r["suite"] == "consistency"]
    assert (wer["metric"], wer["value"], wer["n"]) == ("wer", out["wer"], 2)
    from speechlm_utils.__main__ import main

    shutil.copytree(trained / "final", run / "checkpoints" / "step-0000001")
    (run / "checkpoints" / "step-0000001" / "trainer.pt").touch()
    main(["evaluate", "--run-dir", str(run), "--suite", "sanity", "--tokens", str(tokens),
          "--checkpoints", "all"])  # the CLI: only the new checkpoint is scored
    rows = evaluate.read_eval(run)
    assert {(r["checkpoint"], r["suite"]) for r in rows} == \
        {("final", "sanity"), ("final", "loss"), ("final", "consistency"),
         ("step-0000001", "sanity")}  # fmt: skip

    import datasets  # a local suite with one corrupt recording: left out, with its reason

    shipped = str(evaluate.demo_suite_dir() / "test.parquet")
    demo = datasets.load_dataset("parquet", data_files=shipped, split="train")
    demo = demo.select(range(5)).cast_column("negative", datasets.Audio(decode=False))
    broken = demo.map(lambda row, k: {"negative": {"bytes": b"not audio", "path": "x.ogg"}}
                      if k == 1 else {}, with_indices=True)  # fmt: skip
    broken.save_to_disk(str(tmp_path / "broken"))
    ask = dict(tokens_root=tokens, models=tiny_models, progress=False,
               sources={"demo": tmp_path / "broken"})  # fmt: skip
    quick = evaluate.evaluate_run(run, ["demo"], limit=3, **ask)
    whole = evaluate.evaluate_run(run, ["demo"], **ask)  # the limit did not stand in for it
    for result, limit, scored in ((quick, 3, 2), (whole, None, 4)):
        mine = [r for r in result.rows if r["suite"] == "demo" and r.get("limit") == limit]
        assert mine and all(r["n"] == scored and r["skipped"] == 1 for r in mine)
    lines = list(evaluate.read_jsonl(run / "eval" / "final" / "demo.jsonl"))
    bad = [r for r in lines if "error" in r]
    assert len(lines) == 5 and [r["id"] for r in bad] == ["lexical-001"]
    assert "clip 1" in bad[0]["error"] and "ffmpeg" in bad[0]["error"]
    assert "1 unreadable items skipped" in whole.table()

    demo.save_to_disk(str(tmp_path / "fixed"))  # the same item ids from another source
    fixed = evaluate.evaluate_run(run, ["demo"], tokens_root=tokens, models=tiny_models,
                                  progress=False, sources={"demo": tmp_path / "fixed"})  # fmt: skip
    assert fixed.rows[-1]["source"] == str((tmp_path / "fixed").resolve())
    mine = [r for r in evaluate.read_eval(run) if r["suite"] == "demo" and not r.get("limit")]
    assert mine and all(r["n"] == 5 and "skipped" not in r for r in mine)  # not the old scores
    assert all(r["source"] == str((tmp_path / "fixed").resolve()) for r in mine)
    meta = json.loads((run / "eval" / "encoded" / "demo" / "meta.json").read_text())
    assert meta["source"] == str((tmp_path / "fixed").resolve())


def test_the_evaluation_plot_draws_each_suite_against_its_chance():
    from speechlm_utils import viz

    rows = [{"checkpoint": f"step-{s}", "step": s, "suite": suite, "metric": m, "value": v,
             "chance": c}
            for s in (50, 100)
            for suite, c in (("demo", 0.5), ("sanity", 1 / 3))
            for m, v in (("acc_text_semantic", 0.6), ("acc_speech_all", 0.4))]  # fmt: skip
    rows += [{"checkpoint": "step-50", "step": 50, "suite": "loss", "metric": "loss_semantic",
              "value": 9.0}]  # fmt: skip
    fig = viz.plot_evaluation(rows)
    ax_loss, ax_acc = fig.axes
    levels = sorted(round(line.get_ydata()[0], 2) for line in ax_acc.lines
                    if line.get_linestyle() == ":")  # fmt: skip
    assert levels == [33.33, 50.0]
    curves = [line for line in ax_acc.lines if line.get_linestyle() in ("-", "--")]
    assert len(curves) == 4 and all(list(c.get_xdata()) == [50, 100] for c in curves)
    guesses = {round(line.get_ydata()[0], 2) for line in ax_loss.lines
               if line.get_linestyle() == ":"}  # fmt: skip
    assert guesses == {round(np.log(2048), 2), round(np.log(32001), 2)}


def _token_root(tmp_path, tok, videos: dict[str, int], stored: set[str]):
    """A token root of one piece per video (``videos``: id -> groups), the ``.npy`` written only
    for ``stored`` ones (the others' files are missing: reading them fails)."""
    root = tmp_path / "tokens"
    root.mkdir()
    lines = []
    for k, (vid, groups) in enumerate(videos.items()):
        ids = clip(tok, groups, seed=30 + k)
        if vid in stored:
            np.save(root / f"{vid}.npy", ids)
        lines += [{"type": "piece", "video_id": vid, "stream": 0, "piece": 0, "status": "ok",
                   "tokens": f"{vid}.npy", "n_tokens": int(ids.size), "start_s": 0.0},
                  {"type": "video", "video_id": vid}]  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_the_sanity_suite_reads_only_the_windows_it_needs(tok, tmp_path):
    lay = tok.layout
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"val_videos": ["v"],
                                              "recipe": {"seq_len": 2 * lay.group_len}}))
    root = _token_root(tmp_path, tok, {"a": 5, "b": 5, "c": 5, "v": 3}, stored={"a", "v"})
    first = evaluate.run_windows(run, root, lay, "memorised", limit=2)  # 2 of a's 3 windows
    a = np.load(root / "a.npy")
    assert [w.tolist() for w in first] == [a[:44].tolist(), a[44:88].tolist()]
    with pytest.raises(FileNotFoundError):  # all of them: b's and c's files too
        evaluate.run_windows(run, root, lay, "memorised")
    assert len(evaluate.run_windows(run, root, lay, "val")) == 2


def test_a_token_root_without_the_runs_windows_is_an_error_naming_the_fix(tok, tmp_path):
    lay = tok.layout
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"val_videos": ["v"], "recipe": {"seq_len": 44}}))
    moved = tmp_path / "drive" / "tokens"  # e.g. a Colab Drive path that is gone
    with pytest.raises(FileNotFoundError, match=f"{moved}.*--tokens"):
        evaluate.run_windows(run, moved, lay, "val")
    other = _token_root(tmp_path, tok, {"a": 5}, stored={"a"})  # another run's tokens
    assert evaluate.run_windows(run, other, lay, "val") == []
    err = evaluate.no_windows("val", run, other, "loss")
    assert "videos (v)" in str(err) and str(other) in str(err) and "--tokens" in str(err)
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate.consistency(None, tok, None, None, [])  # never a WER of 0 for no replies


def test_a_run_that_held_out_no_video_skips_loss_and_consistency(tiny_models, tmp_path, capsys):
    run = tmp_path / "run"  # one video in its token root (or val_fraction 0): no validation
    (run / "final").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"val_videos": [], "recipe": {"seq_len": 44}}))
    (run / "final" / "weights.pt").write_bytes(b"")
    (run / "final" / "speechlm.json").write_text(json.dumps({"step": 3}))
    result = evaluate.evaluate_run(run, ["loss", "consistency"], tokens_root=tmp_path,
                                   models=tiny_models, progress=False)  # fmt: skip
    assert result.rows == []  # nothing scored, no model loaded, no error blaming the tokens
    assert "loss, consistency: skipped" in capsys.readouterr().out
