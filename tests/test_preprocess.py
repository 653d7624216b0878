"""Stage 03's run: one stream per video, resume, shards, bad chunks, self-contained roots."""

import json
import math
import shutil
import subprocess

import numpy as np
import pytest

from speechlm_utils import preprocess
from speechlm_utils.audio import ffmpeg_exe
from speechlm_utils.config import TokenizeConfig
from speechlm_utils.manifest import read_jsonl
from speechlm_utils.scrape import segment_copy
from speechlm_utils.tokenizer import SpeechTokenizer

from .conftest import DEMO_DIR


def _add_video(root, video_id, files):
    folder = root / video_id[:2] / video_id
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    for i, (name, duration) in enumerate(files):
        chunks.append({"file": name, "start_s": i * 5.0, "end_s": i * 5.0 + duration})
    (folder / "chunks.json").write_text(json.dumps({"id": video_id, "chunks": chunks}))
    return folder


@pytest.fixture(scope="module")
def chunk_tree(tmp_path_factory):
    """Two real videos cut into 5 s chunks, and one with every kind of bad chunk."""
    root = tmp_path_factory.mktemp("data") / "chunks"
    for vid, src in (("vidA", "demo_ep_001.webm"), ("vidB", "demo_ep_002.m4a")):
        work = tmp_path_factory.mktemp(vid)
        clip = work / f"clip{src[-5:]}"
        subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(DEMO_DIR / src),
                        "-t", "15", "-c", "copy", str(clip)], check=True)  # fmt: skip
        chunks = segment_copy(clip, root / vid[:2] / vid, vid, 5.0, src.split(".")[1])
        (root / vid[:2] / vid / "chunks.json").write_text(json.dumps({"id": vid, "chunks": chunks}))
    bad = _add_video(root, "vidBad", [("corrupt.webm", 5), ("empty.webm", 5), ("silent.webm", 5),
                                      ("short.webm", 0.3)])  # fmt: skip
    (bad / "corrupt.webm").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "empty.webm").write_bytes(b"")
    for name, seconds in (("silent.webm", 5), ("short.webm", 0.3)):
        source = "anullsrc=r=48000:cl=mono" if name == "silent.webm" else "sine=f=300:r=48000"
        subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-t",
                        str(seconds), "-i", source, "-c:a", "libopus", str(bad / name)],
                       check=True)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def sidecar_tree(chunk_tree, tmp_path_factory):
    """The same chunks with the demo's true words stored beside them (as scrape stores a
    transcript), so runs need no Whisper: the tests of resume, shards and roots stay quick."""
    from speechlm_utils.captions import parse_file, split_by_chunks

    root = tmp_path_factory.mktemp("sidecar") / "chunks"
    shutil.copytree(chunk_tree, root)
    for listing_path in root.glob("*/*/chunks.json"):
        listing = json.loads(listing_path.read_text())
        episode = {"vidA": "demo_ep_001", "vidB": "demo_ep_002"}.get(listing["id"])
        truth = parse_file(DEMO_DIR / f"{episode}.json") if episode else []
        starts = [c["start_s"] for c in listing["chunks"]]
        for chunk, words in zip(listing["chunks"], split_by_chunks(truth, starts, 15.0)):
            chunk["words"] = [[w.text, w.start_s, w.end_s] for w in words]
        listing_path.write_text(json.dumps({**listing, "text_source": "sidecar:json"}))
    return root


@pytest.fixture()
def run(tiny_models, codec, aligner, text_tokenizer):
    def go(chunks, tokens, **kw):
        cfg = TokenizeConfig.from_profile("tiny", **{"workers": 0, **kw.pop("cfg", {})})
        return preprocess.run_tokenize(cfg, tiny_models, chunks, tokens, codec=codec,
                                       aligner=aligner, text_tokenizer=text_tokenizer,
                                       progress=False, **kw)  # fmt: skip

    go.layout = SpeechTokenizer(text_tokenizer).layout
    return go


def outputs(tokens_root):
    """chunk -> (status, hash, file bytes) over all manifests of a token root."""
    result = {}
    for r in preprocess.read_token_manifests(tokens_root):
        if r.get("type") == "video":
            continue
        data = (tokens_root / r["tokens"]).read_bytes() if r.get("tokens") else None
        result[r["chunk"]] = (r["status"], r.get("hash"), data)
    return result


def joined(tokens_root, video_id):
    """A video's pieces joined in stream order."""
    return np.concatenate([preprocess.load_tokens(tokens_root, r)
                           for r in preprocess.stream_pieces(tokens_root)
                           if r["video_id"] == video_id])  # fmt: skip


def test_one_run_tokenizes_good_chunks_and_records_bad_ones(run, chunk_tree, tmp_path,
                                                           text_tokenizer):  # fmt: skip
    tokens = tmp_path / "tokens"
    summary = run(chunk_tree, tokens, cfg={"workers": 2})  # decoding threads
    assert summary.ok == 6 and summary.videos == 3
    assert (tokens / "manifest.jsonl").exists() and not list(tmp_path.glob("*.jsonl"))
    records = {r["chunk"]: r for r in read_jsonl(tokens / "manifest.jsonl") if "chunk" in r}
    reasons = {c.split("/")[-1]: (r["status"], r["reason"]) for c, r in records.items()
               if r["status"] != "ok"}  # fmt: skip
    assert reasons["corrupt.webm"][0] == "failed" and "corrupt" in reasons["corrupt.webm"][1]
    assert reasons["empty.webm"] == ("failed", "empty file (0 bytes)")
    assert reasons["silent.webm"][0] == "skipped" and "silent" in reasons["silent.webm"][1]
    assert reasons["short.webm"][0] == "skipped" and "too short" in reasons["short.webm"][1]
    tok = SpeechTokenizer(text_tokenizer)
    for vid in ("vidA", "vidB"):
        pieces = [r for r in preprocess.stream_pieces(tokens) if r["video_id"] == vid]
        assert [r["piece"] for r in pieces] == [0, 1, 2] and {r["stream"] for r in pieces} == {0}
        for a, b in zip(pieces, pieces[1:]):  # the pieces tile the video's timeline
            assert b["start_s"] == pytest.approx(a["start_s"] + a["duration_s"])
            assert abs(b["start_s"] - b["chunk_start_s"]) <= 0.2  # the group nearest the seam
        for r in pieces:
            ids = preprocess.load_tokens(tokens, r)
            assert ids.size == r["n_tokens"] and ids.size % 22 == 0
            assert np.load(tokens / r["tokens"]).dtype == np.uint16
            assert ids.size / 55 == pytest.approx(r["duration_s"])
            assert r["text_source"] == "whisper"
        text, codes = tok.decode(joined(tokens, vid))  # the stream decodes as one
        assert codes.shape == (4, sum(r["n_tokens"] for r in pieces) // 22 * 5)


def test_batched_lanes_match_one_lane(run, sidecar_tree, tmp_path, text_tokenizer):
    """Three videos side by side (the GPU path, with per-lane resets) against one at a time:
    the same pieces and text slots; codes equal but for float near-ties of the random codec."""
    run(sidecar_tree, tmp_path / "one" / "tokens")
    run(sidecar_tree, tmp_path / "three" / "tokens", lanes=3)
    one, three = outputs(tmp_path / "one" / "tokens"), outputs(tmp_path / "three" / "tokens")
    assert {c: v[0] for c, v in one.items()} == {c: v[0] for c, v in three.items()}
    lay = run.layout
    for vid in ("vidA", "vidB"):
        a, b = joined(tmp_path / "one" / "tokens", vid), joined(tmp_path / "three" / "tokens", vid)
        text = lay.kinds(a.size) == 0
        assert a.size == b.size and np.array_equal(a[text], b[text])
        assert (a[~text] == b[~text]).mean() > 0.97


def _pcm_tree(root, wav, words, chunk_s, video_id="conv", turns=None):
    """A video as exact PCM chunks of ``chunk_s`` with a sidecar transcript split at the real
    chunk starts (what scrape stores), so chunked and whole audio are sample-identical; with
    speaker ``turns``, each chunk's turns too."""
    import soundfile as sf

    from speechlm_utils.captions import split_by_chunks
    from speechlm_utils.speakers import split_turns_by_chunks

    folder = root / video_id[:2] / video_id
    folder.mkdir(parents=True)
    step = round(chunk_s * 24000)
    starts = list(range(0, wav.size, step))
    per_chunk = split_by_chunks(words, [s / 24000 for s in starts], wav.size / 24000)
    chunks = []
    for i, (s, chunk_words) in enumerate(zip(starts, per_chunk)):
        name = f"{video_id}_{i:05d}.wav"
        sf.write(folder / name, wav[s : s + step], 24000, subtype="FLOAT")
        chunks.append({"file": name, "start_s": s / 24000, "end_s": min(wav.size, s + step) / 24000,
                       "words": [[w.text, w.start_s, w.end_s] for w in chunk_words]})  # fmt: skip
    if turns:
        for chunk, part in zip(chunks, split_turns_by_chunks(turns, [s / 24000 for s in starts],
                                                            wav.size / 24000)):  # fmt: skip
            chunk["turns"] = [[t.speaker, t.start_s, t.end_s] for t in part]
    (folder / "chunks.json").write_text(json.dumps({"id": video_id, "chunks": chunks,
                                                    "text_source": "sidecar:json"}))  # fmt: skip
    return root


def _conversations():
    """The demo's first episode (its first 30 s), and a synthetic two-voice conversation cut
    from episodes 1 and 2 (turns of 4-7 s), with their true word times."""
    from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ as SR
    from speechlm_utils.audio import load_audio
    from speechlm_utils.captions import parse_file

    voices = [(load_audio(DEMO_DIR / f), parse_file(DEMO_DIR / j)) for f, j in
              (("demo_ep_001.webm", "demo_ep_001.json"), ("demo_ep_002.m4a", "demo_ep_002.json"))]
    from speechlm_utils.speakers import Turn

    turns, words, speakers, said_by, t = [], [], [], [], 0.0
    for i, (a, b) in enumerate([(0, 5.2), (3, 9.8), (5.2, 11.0), (9.8, 14.1), (11.0, 17.3)]):
        wav, truth = voices[i % 2]
        turns.append(wav[round(a * SR) : round(b * SR)])
        mine = [w.shifted(t - a) for w in truth if a <= w.start_s and w.end_s <= b]  # whole
        words += mine
        said_by += ["ab"[i % 2]] * len(mine)  # who really says each word
        speakers.append(Turn("ab"[i % 2], t, t + b - a))
        t += b - a
    demo_wav, demo_words = voices[0]
    return {"demo": (demo_wav[: 30 * SR], [w for w in demo_words if w.start_s < 30]),
            "synthetic": (np.concatenate(turns), words), "synthetic_turns": speakers,
            "synthetic_said_by": said_by}


@pytest.mark.parametrize(("name", "chunk_s"), [("demo", 10.0), ("synthetic", 10.0),
                                               ("synthetic", 7.0)])  # seams off the 400 ms grid
def test_a_chunked_conversation_equals_the_same_audio_tokenized_whole(run, tmp_path, name,
                                                                      chunk_s):  # fmt: skip
    wav, words = _conversations()[name]
    streams = {}
    for label, seconds in (("whole", 1000.0), ("chunked", chunk_s)):
        root = tmp_path / name / label
        _pcm_tree(root / "chunks", wav, words, seconds)
        summary = run(root / "chunks", root / "tokens")
        seams = 0 if label == "whole" else math.ceil(wav.size / 24000 / chunk_s) - 1
        assert summary.streams == 1 and summary.seams == seams
        streams[label] = joined(root / "tokens", "conv")
    whole, chunked = streams["whole"], streams["chunked"]
    assert whole.size == chunked.size == math.ceil(wav.size / 9600) * 22  # same groups
    kinds = run.layout.kinds(whole.size)
    text = kinds == 0
    assert np.array_equal(whole[text], chunked[text])  # identical text slots
    assert np.array_equal(whole[~text], chunked[~text])  # identical codes


def test_the_last_slots_of_a_piece_carry_the_next_pieces_first_words(run, tmp_path):
    wav, words = _conversations()["demo"]
    _pcm_tree(tmp_path / "chunks", wav, words, 10.0)
    run(tmp_path / "chunks", tmp_path / "tokens")
    pieces = preprocess.stream_pieces(tmp_path / "tokens")
    lay = run.layout
    for before, after in zip(pieces, pieces[1:]):
        ids = preprocess.load_tokens(tmp_path / "tokens", before)
        last = ids[-5 * lay.group_len :]  # the last 2 s
        tail = last[lay.kinds(last.size) == 0]
        assert (tail != lay.text_pad_id).any()  # words of the next piece are already there
        assert preprocess.words_of(after) and before["words"]


def test_resume_after_a_crash_equals_one_run(run, sidecar_tree, tmp_path, monkeypatch):
    run(sidecar_tree, tmp_path / "clean" / "tokens")
    crashed = tmp_path / "crashed" / "tokens"
    real = preprocess.SpeechTokenizer.encode
    calls = {"n": 0}

    def dies_on_the_second(self, codes, words):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, codes, words)

    monkeypatch.setattr(preprocess.SpeechTokenizer, "encode", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(sidecar_tree, crashed, cfg={"batch_size": 1})
    monkeypatch.setattr(preprocess.SpeechTokenizer, "encode", real)
    partial = outputs(crashed)
    assert 0 < sum(s == "ok" for s, _, _ in partial.values()) < 6
    again = run(sidecar_tree, crashed)
    assert again.done_before > 0 and again.videos < 3
    assert outputs(crashed) == outputs(tmp_path / "clean" / "tokens")
    assert run(sidecar_tree, crashed).ok == 0  # nothing left to do


def test_shards_together_equal_one_run(run, sidecar_tree, tmp_path):
    run(sidecar_tree, tmp_path / "one" / "tokens")
    for i in range(3):
        run(sidecar_tree, tmp_path / "sharded" / "tokens", shard=(i, 3))
    assert len(list((tmp_path / "sharded" / "tokens").glob("manifest.*-of-3.jsonl"))) >= 2
    assert outputs(tmp_path / "sharded" / "tokens") == outputs(tmp_path / "one" / "tokens")


def test_same_bytes_hash_alike_and_a_root_holds_one_config(run, sidecar_tree, tmp_path):
    tree = tmp_path / "chunks"
    shutil.copytree(sidecar_tree / "vi" / "vidA", tree / "vi" / "vidA")
    shutil.copytree(sidecar_tree / "vi" / "vidA", tree / "co" / "copyA")  # same bytes, new video
    listing = json.loads((tree / "co" / "copyA" / "chunks.json").read_text())
    (tree / "co" / "copyA" / "chunks.json").write_text(json.dumps({**listing, "id": "copyA"}))
    run(tree, tmp_path / "x" / "tokA")
    pieces = preprocess.stream_pieces(tmp_path / "x" / "tokA")
    by_name = {}
    for r in pieces:
        by_name.setdefault(r["chunk"].split("/")[-1], set()).add(r["hash"])
    assert all(len(hashes) == 1 for hashes in by_name.values())  # copy -> same hash
    with pytest.raises(preprocess.TokenRootError, match="another configuration"):
        run(tree, tmp_path / "x" / "tokA", cfg={"text_lead_s": 1.0})
    # two token roots in one folder stay independent: the second is complete, not empty
    relead = run(tree, tmp_path / "x" / "tokB", cfg={"text_lead_s": 1.0})
    assert relead.ok == len(pieces)
    new = preprocess.stream_pieces(tmp_path / "x" / "tokB")
    assert len(new) == len(pieces) and not {r["hash"] for r in new} & {r["hash"] for r in pieces}
    assert len(preprocess.stream_pieces(tmp_path / "x" / "tokA")) == len(pieces)
    assert preprocess.read_token_layout(tmp_path / "x" / "tokB")["text_lead_s"] == 1.0


def test_torchrun_ranks_split_exactly_a_hosts_shard(run, sidecar_tree, tmp_path):
    from speechlm_utils.manifest import in_shard

    keys = [f"video{i}" for i in range(300)]
    host = [k for k in keys if in_shard(k, (1, 3))]
    ranks = [[k for k in keys if in_shard(k, (1, 3), (r, 4))] for r in range(4)]
    assert sorted(sum(ranks, [])) == sorted(host) and all(ranks)  # a partition of the host's
    for r in range(2):  # two "GPUs" of one host write their own manifests
        run(sidecar_tree, tmp_path / "ranks" / "tokens", rank=(r, 2))
    run(sidecar_tree, tmp_path / "one" / "tokens")
    assert outputs(tmp_path / "ranks" / "tokens") == outputs(tmp_path / "one" / "tokens")


# -- the duplex layout (stage 08) ---------------------------------------------------------------


def test_duplex_examples_are_one_stream_per_video_with_each_speakers_words(run, tmp_path,
                                                                          text_tokenizer):
    """Two speakers, both as the assistant once: per example, chunked equals whole (the tracks
    are cut from one timeline), the text slots hold only the assistant's words, and the two
    examples mirror each other (one's user track is the other's assistant track)."""
    conv = _conversations()
    wav, words = conv["synthetic"]
    wav, words = wav[: 15 * 24000], [w for w in words if w.end_s < 15]
    cfg = {"user_codebooks": 2, "assistant": "both"}
    streams = {}
    for label, seconds in (("whole", 1000.0), ("chunked", 7.0)):
        root = tmp_path / label
        _pcm_tree(root / "chunks", wav, words, seconds, turns=conv["synthetic_turns"])
        summary = run(root / "chunks", root / "tokens", cfg=cfg)
        assert summary.streams == 1 and summary.examples == 2
        for role in ("a", "b"):
            streams[label, role] = preprocess.video_stream(root / "tokens", "conv", role=role)[0]
    tok = SpeechTokenizer(text_tokenizer, user_codebooks=2)
    lay = tok.layout
    for role in ("a", "b"):
        whole, chunked = streams["whole", role], streams["chunked", role]
        assert whole.size == chunked.size == math.ceil(wav.size / 9600) * lay.group_len
        assert np.array_equal(whole, chunked)
        text, codes, user = tok.decode_streams(whole)  # every id of its position's kind
        assert codes.shape == (4, whole.size // lay.group_len * 5) and user.shape[0] == 2
        mine = [w for w, who in zip(words, conv["synthetic_said_by"]) if who == role]
        assert 0 < len(mine) < len(words)
        assert text == tok.sp.decode(tok.tokenize_words(mine)[0])  # the assistant's words only
    _, codes_a, user_a = tok.decode_streams(streams["whole", "a"])
    _, codes_b, user_b = tok.decode_streams(streams["whole", "b"])
    assert (user_a == codes_b[:2]).mean() > 0.97 and (user_b == codes_a[:2]).mean() > 0.97
    pieces = [r for r in preprocess.stream_pieces(tmp_path / "chunked" / "tokens")
              if r["role"] == "a"]  # fmt: skip
    assert len(pieces) == 3 and all(r["user"] == ["b"] for r in pieces)
    assert {t[0] for r in pieces for t in r["turns"]} == {"a", "b"}
    layout = preprocess.read_token_layout(tmp_path / "whole" / "tokens")
    assert (layout["user_codebooks"], layout["assistant"], layout["overlap"]) == (2, "both", "both")


def test_duplex_skips_a_video_without_speaker_turns_with_its_reason(run, sidecar_tree, tmp_path):
    tokens = tmp_path / "tokens"
    summary = run(sidecar_tree, tokens, cfg={"user_codebooks": 1})
    assert summary.ok == 0 and summary.videos == 0
    reasons = set(summary.skipped.values())
    assert any("no speaker turns" in r and "speechlm_utils diarize" in r for r in reasons)
    again = run(sidecar_tree, tokens, cfg={"user_codebooks": 1})  # not done: tried again
    assert again.done_before == 0 and set(again.skipped.values()) == reasons
    with pytest.raises(preprocess.TokenRootError, match="another configuration"):
        run(sidecar_tree, tokens)  # a duplex root is not a mono root


def test_the_first_seconds_are_whole_chunks_by_their_middle():
    from speechlm_utils.preprocess import in_first_seconds

    first, second = {"start_s": -0.046, "duration_s": 20.0}, {"start_s": 19.954, "duration_s": 20.0}
    assert in_first_seconds(first, 20.0) and not in_first_seconds(second, 20.0)  # cut at 19.95 s
    assert in_first_seconds(second, 40.0) and in_first_seconds(second, None)
