"""Text you already have: caption parsers, chunk splitting, and transcripts as the text channel."""

import json
import shutil

import numpy as np
import pytest

from speechlm_utils import preprocess, scrape
from speechlm_utils.captions import parse_file, split_by_chunks
from speechlm_utils.config import ScrapeConfig, TokenizeConfig
from speechlm_utils.local_server import serve_directory
from speechlm_utils.manifest import read_jsonl
from speechlm_utils.tokenizer import SpeechTokenizer
from speechlm_utils.words import Word

from .conftest import DEMO_DIR, REPO

ASSETS = REPO / "tests" / "assets"


def texts(words):
    return [w.text for w in words]


def assert_ordered(words):
    starts = [w.start_s for w in words]
    assert starts == sorted(starts)
    assert all(w.start_s <= w.end_s for w in words)
    assert all(a.end_s <= b.start_s for a, b in zip(words, words[1:]))  # no overlap left


def test_json3_automatic_captions_use_word_offsets():
    words = parse_file(ASSETS / "captions_auto.json3")
    assert texts(words) == ["so", "today", "we're", "talking", "about", "bread", "and", "yeast",
                            "boundary", "word"]  # [Music] and >> gone, &#39; decoded  # fmt: skip
    assert [w.start_s for w in words[:5]] == [3.5, 3.82, 4.3, 4.7, 5.18]  # tOffsetMs
    assert_ordered(words)


def test_json3_human_captions_spread_words_over_the_line():
    words = parse_file(ASSETS / "captions_manual.json3")
    assert texts(words) == ["Hello", "there,", "friend.", "Fish", "&", "chips?"]
    assert words[0].start_s == 1.0 and words[2].end_s <= 3.0 and words[3].start_s == 4.0
    assert_ordered(words)


def test_vtt_rolling_captions_inline_times_and_entities():
    words = parse_file(ASSETS / "rolling.vtt")
    assert texts(words) == ["so", "today", "we're", "talking", "about", "bread", "&", "fish",
                            "<3"]  # repeated rolling lines once, [Music] dropped  # fmt: skip
    assert [w.start_s for w in words[:3]] == [1.0, 1.5, 2.0]  # <00:00:01.500> word times
    assert_ordered(words)


def test_srt_overlaps_empty_cues_and_music():
    words = parse_file(ASSETS / "sample.srt")
    # tags stripped; the dialogue dash, the empty cue and the ♪ lyrics dropped
    assert texts(words) == ["First", "line,", "with", "bold.", "Overlapping", "cue", "late",
                            "words"]  # fmt: skip
    assert words[-2].start_s == 3600.0
    assert_ordered(words)


def test_unknown_format_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown caption format"):
        parse_file(tmp_path / "notes.txt")


def test_split_matches_chunk_boundaries_and_each_word_goes_once():
    words = parse_file(ASSETS / "captions_auto.json3")
    starts = [0.0, 4.7, 19.9]  # real segment starts; "talking" and "boundary" start exactly there
    per_chunk = split_by_chunks(words, starts, end_s=25.0)
    assert [texts(c) for c in per_chunk] == [
        ["so", "today", "we're"], ["talking", "about", "bread", "and", "yeast"],
        ["boundary", "word"]]  # fmt: skip
    assert sum(len(c) for c in per_chunk) == len(words)
    for chunk, lo, hi in zip(per_chunk, starts, starts[1:] + [25.0]):
        for w in chunk:
            assert 0 <= w.start_s < hi - lo and w.end_s <= hi - lo  # relative, clipped
    assert per_chunk[1][0].start_s == 0.0


def test_words_outside_every_chunk_are_left_out():
    words = [Word("early", 1.0, 1.5), Word("inside", 6.0, 6.5), Word("late", 30.0, 30.5)]
    assert [texts(c) for c in split_by_chunks(words, [5.0, 10.0], end_s=15.0)] == [["inside"], []]


@pytest.fixture(scope="module")
def demo_chunks(tmp_path_factory):
    """The demo podcast scraped from 127.0.0.1 with its sidecar transcripts."""
    root = tmp_path_factory.mktemp("demo")
    served = root / "served"
    shutil.copytree(DEMO_DIR, served, ignore=shutil.ignore_patterns("*.py"))
    entries = [{"id": p.stem, "url": None, "duration_s": 60} for p in sorted(served.glob("*.json"))]
    with serve_directory(served) as base:
        for e in entries:
            e["url"] = f"{base}/{json.loads((served / (e['id'] + '.json')).read_text())['media']}"
        summary = scrape.run_scrape(ScrapeConfig.from_profile("tiny", chunk_s=20.0), entries,
                                    root / "chunks", progress=False)  # fmt: skip
    assert summary.ok == 3
    return root


def test_scrape_stores_the_sidecar_split_at_real_chunk_starts(demo_chunks):
    for listing in scrape.read_chunk_listings(demo_chunks / "chunks"):
        assert listing["text_source"] == "sidecar:json"
        assert (listing["folder"] / "sidecar.json").exists()
        truth = json.loads((DEMO_DIR / f"{listing['id']}.json").read_text())["words"]
        stored = [(t, s + c["start_s"]) for c in listing["chunks"] for t, s, _ in c["words"]]
        assert [t for t, _ in stored] == [w["word"] for w in truth]  # every word, once, in order
        for (_, start), w in zip(stored, truth):
            assert start == pytest.approx(w["start_s"], abs=2e-3)
    records = list(read_jsonl(demo_chunks / "scrape.jsonl"))
    assert {r["text_source"] for r in records} == {"sidecar:json"}


def test_scrape_stores_the_sidecars_speaker_turns_per_chunk(demo_chunks):
    from speechlm_utils import speakers

    for listing in scrape.read_chunk_listings(demo_chunks / "chunks"):
        assert listing["speaker_source"] == "sidecar"
        truth = speakers.turns_from_transcript(DEMO_DIR / f"{listing['id']}.json")
        stored = [speakers.Turn(s, a + c["start_s"], b + c["start_s"])
                  for c in listing["chunks"] for s, a, b in c["turns"]]  # fmt: skip
        joined = speakers.merge_turns(stored, gap_s=0.01)  # a turn across a seam is one again
        assert [t.speaker for t in joined] == [t.speaker for t in truth]
        for got, want in zip(joined, truth):
            assert got.start_s == pytest.approx(want.start_s, abs=2e-3)
            assert got.end_s == pytest.approx(want.end_s, abs=2e-3)
    records = list(read_jsonl(demo_chunks / "scrape.jsonl"))
    assert {r["speaker_source"] for r in records} == {"sidecar"}


def test_sidecar_text_reaches_the_tokens_and_decodes_back(demo_chunks, tiny_models, codec,
                                                           text_tokenizer):  # fmt: skip
    cfg = TokenizeConfig.from_profile("tiny", workers=0)
    assert cfg.text_source == "sidecar"  # the tiny profile's default
    summary = preprocess.run_tokenize(cfg, tiny_models, demo_chunks / "chunks",
                                      demo_chunks / "tokens", codec=codec,
                                      text_tokenizer=text_tokenizer, progress=False)  # fmt: skip
    assert summary.ok >= 8 and summary.overflow_tokens == 0
    tok = SpeechTokenizer.from_config(text_tokenizer, cfg)
    pieces = preprocess.stream_pieces(demo_chunks / "tokens")
    assert {r["text_source"] for r in pieces} == {"sidecar:json"}
    for vid in {r["video_id"] for r in pieces}:  # a video's pieces are one stream
        mine = [r for r in pieces if r["video_id"] == vid]
        ids = np.concatenate([preprocess.load_tokens(demo_chunks / "tokens", r) for r in mine])
        text, codes = tok.decode(ids)
        truth = json.loads((DEMO_DIR / f"{vid}.json").read_text())["words"]
        assert text == " ".join(w["word"] for w in truth)  # the whole transcript, in order
        assert [w[0] for r in mine for w in r["words"]] == [w["word"] for w in truth]
        assert codes.shape[0] == 4


def test_text_source_choice(tmp_path):
    item = {"stored_text": "captions:en:json3", "stored_words": [["hi", 0.1, 0.3]]}
    assert preprocess.stored_words(item, "whisper") is None
    assert preprocess.stored_words(item, "sidecar") is None  # captions are not a transcript
    label, words = preprocess.stored_words(item, "captions")
    assert label == "captions:en:json3" and texts(words) == ["hi"]
    assert preprocess.stored_words({"stored_text": None}, "captions") is None  # -> Whisper
    with pytest.raises(ValueError, match="text_source"):
        preprocess.stored_words(item, "subtitles")


def test_youtube_caption_files_are_found_by_language_and_format(tmp_path):
    cfg = ScrapeConfig.from_profile("tiny", caption_langs=("en", "de"))
    shutil.copy(ASSETS / "rolling.vtt", tmp_path / "download.en.vtt")
    shutil.copy(ASSETS / "captions_auto.json3", tmp_path / "download.en.json3")
    shutil.copy(ASSETS / "captions_manual.json3", tmp_path / "download.de.json3")
    label, path = scrape._find_timed_text("https://www.youtube.com/watch?v=dQw4w9WgXcQ",
                                          tmp_path, cfg)  # fmt: skip
    assert label == "captions:en:json3" and path.name == "download.en.json3"
    chunks = [{"file": "a", "start_s": 0.0, "end_s": 4.7}, {"file": "b", "start_s": 4.7,
                                                             "end_s": 25.0}]  # fmt: skip
    out = tmp_path / "chunks"
    out.mkdir()
    assert scrape._attach_timed_text("https://youtu.be/dQw4w9WgXcQ", tmp_path, out, chunks,
                                     25.0, cfg) == "captions:en:json3"  # fmt: skip
    assert [w[0] for w in chunks[0]["words"]] == ["so", "today", "we're"]
    assert (out / "captions.json3").exists()
    assert np.isclose(chunks[1]["words"][0][1], 0.0)
