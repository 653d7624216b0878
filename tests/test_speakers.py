"""Who speaks when, and the two tracks a duplex model learns from."""

import json

import numpy as np
import pytest

from speechlm_utils import speakers
from speechlm_utils.speakers import Turn
from speechlm_utils.words import Word

from .conftest import DEMO_DIR


def test_the_demo_sidecar_gives_its_turns():
    data = json.loads((DEMO_DIR / "demo_ep_001.json").read_text())
    turns = speakers.turns_from_transcript(data)
    by_turn = {}
    for w in data["words"]:
        by_turn.setdefault(w["turn"], []).append(w)
    assert len(turns) == len(by_turn) == 6
    for turn, (_, words) in zip(turns, sorted(by_turn.items())):
        assert turn.speaker == words[0]["speaker"]
        assert turn.start_s == words[0]["start_s"] and turn.end_s == words[-1]["end_s"]
    assert [t.speaker for t in turns] == ["host", "guest"] * 3
    totals = speakers.speaking_time(turns)
    assert speakers.pick_assistant(turns) == next(iter(totals)) == "guest"
    assert speakers.pick_assistant(turns, "least_talkative") == "host"
    assert speakers.pick_assistant(turns, "host") == "host"
    with pytest.raises(ValueError, match="not a speaker"):
        speakers.pick_assistant(turns, "nobody")


def test_vtt_voice_tags_give_turns():
    vtt = ("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n<v Ana>Hello there.\n\n"
           "00:00:02.500 --> 00:00:04.000\n<v Ana>How are you?\n\n"
           "00:00:05.000 --> 00:00:06.000\n<v Bo>Fine.</v>\n")  # fmt: skip
    turns = speakers.turns_from_vtt(vtt)
    assert [(t.speaker, t.start_s, t.end_s) for t in turns] == [("Ana", 0.0, 4.0),
                                                                 ("Bo", 5.0, 6.0)]


def test_assistant_words_are_the_assistants_only():
    turns = [Turn("a", 0.0, 2.0), Turn("b", 2.5, 4.0), Turn("a", 4.5, 6.0)]
    words = [Word(" one", 0.1, 0.5), Word(" two", 2.6, 3.0), Word(" three", 5.0, 5.4)]
    assert [w.text for w in speakers.words_of(words, turns, "a")] == [" one", " three"]
    assert [w.text for w in speakers.words_of(words, turns, "b")] == [" two"]


@pytest.mark.parametrize("overlap", speakers.OVERLAP_POLICIES)
def test_two_tracks_from_one_mix(overlap):
    rate = 1000
    wav = np.ones(6 * rate, np.float32)
    turns = [Turn("a", 0.0, 2.0), Turn("b", 1.5, 4.0), Turn("a", 5.0, 6.0)]
    mine, theirs = speakers.split_tracks(wav, rate, turns, "a", overlap)
    at = lambda x, s: float(x[int(s * rate)])  # noqa: E731
    assert at(mine, 0.5) == 1 and at(theirs, 0.5) == 0  # the assistant alone
    assert at(mine, 3.0) == 0 and at(theirs, 3.0) == 1  # the user alone
    assert at(mine, 4.5) == 0 and at(theirs, 4.5) == 0  # nobody: both silent
    assert at(mine, 5.5) == 1
    both = (at(mine, 1.75), at(theirs, 1.75))  # the overlap
    assert both == {"both": (1, 1), "assistant": (1, 0), "user": (0, 1)}[overlap]
    edge = mine[int(2.0 * rate) - 20 : int(2.0 * rate) + 20]
    if overlap != "user":
        assert np.all(np.diff(edge) <= 0) and 0 < edge[20] < 1  # a fade, not a click


def test_track_gains_of_any_window_equal_the_whole_timeline_cut_there():
    rate = 1000
    turns = [Turn("a", 0.0, 2.0), Turn("b", 1.5, 4.0), Turn("a", 4.004, 8.0)]
    whole = speakers.track_gains(turns, "a", rate, 0, 7000)
    cuts = [0, 1999, 2003, 4000, 4010, 7000]  # windows ending inside turns and ramps
    parts = [speakers.track_gains(turns, "a", rate, a, b - a) for a, b in zip(cuts, cuts[1:])]
    for i in (0, 1):
        assert np.array_equal(whole[i], np.concatenate([p[i] for p in parts]))
    assert whole[0][6999] == 1.0  # a turn running past the window is not faded at its end


def test_both_roles_are_the_two_most_talkative():
    turns = [Turn("a", 0, 5), Turn("b", 5, 7), Turn("c", 7, 7.5), Turn("b", 8, 10)]
    assert speakers.pick_assistants(turns, "both") == ["a", "b"]
    assert speakers.pick_assistants(turns, "c") == ["c"]


def test_turns_split_at_chunk_seams_like_words():
    turns = [Turn("a", 0.0, 25.0), Turn("b", 26.0, 30.0)]
    parts = speakers.split_turns_by_chunks(turns, [0.0, 20.04], 40.0)
    assert [(t.speaker, t.start_s, t.end_s) for t in parts[0]] == [("a", 0.0, 20.04)]
    assert [(t.speaker, t.start_s, t.end_s) for t in parts[1]] == [("a", 0.0, 4.96),
                                                                    ("b", 5.96, 9.96)]
    assert speakers.from_json(speakers.to_json(turns, "sidecar")) == turns


def test_diarization_without_pyannote_says_what_to_do(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyannote(name, *args, **kwargs):
        if name.startswith("pyannote"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyannote)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[diarize\]'.*sidecar"):
        speakers.diarize(np.zeros(16_000, np.float32))


def test_diarization_turns_come_from_the_pipelines_annotation():
    class Segment:
        def __init__(self, start, end):
            self.start, self.end = start, end

    class Annotation:
        def itertracks(self, yield_label=False):
            yield Segment(0.0, 1.0), "t0", "SPEAKER_00"
            yield Segment(1.2, 2.0), "t1", "SPEAKER_00"
            yield Segment(2.5, 4.0), "t2", "SPEAKER_01"

    turns = speakers.diarize(np.zeros(16_000, np.float32), pipeline=lambda audio: Annotation())
    assert [(t.speaker, t.start_s, t.end_s) for t in turns] == [("SPEAKER_00", 0.0, 2.0),
                                                                 ("SPEAKER_01", 2.5, 4.0)]


def test_scrape_diarizes_a_video_whose_media_comes_without_labels(tmp_path, monkeypatch):
    """--diarize: the pipeline hears the whole download once (16 kHz), its turns are split at
    the chunks' real starts, and chunks.json and the manifest say where they came from."""
    import shutil

    from speechlm_utils import scrape
    from speechlm_utils.config import ScrapeConfig
    from speechlm_utils.local_server import serve_directory
    from speechlm_utils.manifest import read_jsonl

    heard = []

    class Segment:
        def __init__(self, start, end):
            self.start, self.end = start, end

    class Annotation:
        def itertracks(self, yield_label=False):
            yield Segment(0.0, 25.0), "t0", "SPEAKER_00"
            yield Segment(26.0, 50.0), "t1", "SPEAKER_01"

    def pipeline(audio):
        heard.append(audio["waveform"].shape[-1] / audio["sample_rate"])
        return Annotation()

    monkeypatch.setattr(speakers, "load_diarization", lambda token, device: pipeline)
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(DEMO_DIR / "demo_ep_001.webm", served)  # no transcript beside it
    with serve_directory(served) as base:
        entries = [{"id": "ep1", "url": f"{base}/demo_ep_001.webm", "duration_s": 60}]
        cfg = ScrapeConfig.from_profile("tiny", chunk_s=20.0, diarize=True, sidecar=False)
        assert scrape.run_scrape(cfg, entries, tmp_path / "chunks", progress=False).ok == 1
    assert len(heard) == 1 and heard[0] == pytest.approx(60.2, abs=0.1)
    listing = scrape.read_chunk_listings(tmp_path / "chunks")[0]
    assert listing["speaker_source"] == "diarization"
    stored = [(s, a + c["start_s"], b + c["start_s"]) for c in listing["chunks"]
              for s, a, b in c["turns"]]  # fmt: skip
    joined = speakers.merge_turns(speakers.Turn(*t) for t in stored)
    assert [(t.speaker, t.start_s, round(t.end_s, 2)) for t in joined] == [
        ("SPEAKER_00", 0.0, 25.0), ("SPEAKER_01", 26.0, 50.0)]
    assert [r["speaker_source"] for r in read_jsonl(scrape.manifest_path(tmp_path / "chunks"))] == [
        "diarization"]


def test_diarize_gives_videos_scraped_without_labels_their_turns(tmp_path):
    """`diarize` after the fact: a video scraped without turns is rebuilt from its chunks at
    16 kHz, diarized, and its chunks.json gets turns split at the real starts; a second run
    skips it; a failing video keeps no turns, says why, and is tried again."""
    import json
    import shutil

    from speechlm_utils import scrape
    from speechlm_utils.config import ScrapeConfig
    from speechlm_utils.local_server import serve_directory

    served = tmp_path / "served"
    served.mkdir()
    for name in ("demo_ep_001.webm", "demo_ep_003.webm"):
        shutil.copy(DEMO_DIR / name, served)
    with serve_directory(served) as base:
        entries = [{"id": f"ep{n}", "url": f"{base}/demo_ep_00{n}.webm", "duration_s": 60}
                   for n in (1, 3)]  # fmt: skip
        cfg = ScrapeConfig.from_profile("tiny", chunk_s=20.0, sidecar=False)
        assert scrape.run_scrape(cfg, entries, tmp_path / "chunks", progress=False).ok == 2
    heard = []

    class Annotation:
        def itertracks(self, yield_label=False):
            yield type("S", (), {"start": 1.0, "end": 30.0})(), "t", "A"
            yield type("S", (), {"start": 31.0, "end": 45.0})(), "t", "B"

    def pipeline(audio):
        seconds = audio["waveform"].shape[-1] / audio["sample_rate"]
        heard.append(seconds)
        if len(heard) == 2:
            raise RuntimeError("CUDA out of memory")
        return Annotation()

    from speechlm_utils import duplex

    diarizer = speakers.Diarizer(pipeline=pipeline)
    assert duplex.ensure_speaker_turns(tmp_path / "chunks", "tiny", diarizer=diarizer) is None
    summary = duplex.ensure_speaker_turns(tmp_path / "chunks", "full", diarizer=diarizer)  # 08's
    assert (summary.diarized, summary.had_turns, len(summary.failed)) == (1, 0, 1)
    assert 59 < heard[0] < 62  # the whole video, joined from its chunks
    listings = {x["id"]: x for x in scrape.read_chunk_listings(tmp_path / "chunks")}
    done, failed = listings["ep1"], listings["ep3"]  # in folder order: the second one failed
    assert done["speaker_source"] == "diarization" and "speaker_error" not in done
    stored = [speakers.Turn(s, a + c["start_s"], b + c["start_s"])
              for c in done["chunks"] for s, a, b in c["turns"]]  # fmt: skip
    assert [(t.speaker, t.start_s, round(t.end_s, 2)) for t in speakers.merge_turns(stored)] == [
        ("A", 1.0, 30.0), ("B", 31.0, 45.0)]
    assert "CUDA out of memory" in failed["speaker_error"] and not failed.get("speaker_source")
    assert "folder" not in json.loads((done["folder"] / "chunks.json").read_text())
    again = speakers.run_diarize(tmp_path / "chunks", diarizer, progress=False)
    assert (again.diarized, again.had_turns) == (1, 1) and len(heard) == 3  # only the failed one
    # nothing left to diarize: no pyannote loaded (not installed here)
    assert duplex.ensure_speaker_turns(tmp_path / "chunks", "full") is None and len(heard) == 3


def test_a_named_assistant_a_video_lacks_is_final_and_a_mistyped_one_fails_first(
        tiny_models, codec, text_tokenizer, tmp_path):  # fmt: skip
    """`tokenize --assistant NAME`: a name no video has is refused before the root is claimed,
    with the speakers there; a video without the name is skipped for good, its speakers in the
    reason and a final line in the manifest, so a re-run does not try it again."""
    from speechlm_utils import preprocess
    from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, load_audio
    from speechlm_utils.config import TokenizeConfig
    from speechlm_utils.manifest import read_jsonl

    from .test_preprocess import _pcm_tree

    wav = load_audio(DEMO_DIR / "demo_ep_001.webm", MIMI_SAMPLE_RATE_HZ)[: 3 * 24000]
    chunks = tmp_path / "chunks"
    for video, (one, other) in (("conv1", "ab"), ("conv2", "cd")):
        _pcm_tree(chunks, wav, [], 2.0, video, [Turn(one, 0.0, 1.8), Turn(other, 2.0, 2.8)])
    tokens = tmp_path / "tokens"

    def run(assistant):
        cfg = TokenizeConfig.from_profile("tiny", workers=0, user_codebooks=2,
                                          assistant=assistant)  # fmt: skip
        return preprocess.run_tokenize(cfg, tiny_models, chunks, tokens, codec=codec,
                                       text_tokenizer=text_tokenizer, progress=False)  # fmt: skip

    with pytest.raises(preprocess.AssistantNameError,
                       match=r"'hots' is not a speaker of any of the 2 videos with speaker turns "
                             r"here \(their speakers: a, b, c, d\)"):  # fmt: skip
        run("hots")
    assert not (tokens / "layout.json").exists()  # nothing claimed: the right name may follow
    from speechlm_utils.__main__ import main

    with pytest.raises(SystemExit, match="their speakers: a, b, c, d"):  # a message, no traceback
        main(["--profile", "tiny", "tokenize", "--chunks", str(chunks), "--out", str(tokens),
              "--user-codebooks", "2", "--assistant", "hots"])  # fmt: skip
    assert not (tokens / "layout.json").exists()
    skipped = {}  # under torchrun a rank may hold none of a speaker's videos: it cannot tell
    for rank in range(2):  # a mistyped name, so it skips its videos and raises nothing
        cfg = TokenizeConfig.from_profile("tiny", workers=0, user_codebooks=2, assistant="hots")
        skipped.update(preprocess.run_tokenize(cfg, tiny_models, chunks, tmp_path / "ranks",
                                               rank=(rank, 2), codec=codec, progress=False,
                                               text_tokenizer=text_tokenizer).skipped)  # fmt: skip
    assert {chunk.split("/")[1] for chunk in skipped} == {"conv1", "conv2"}
    assert all("its speakers" in reason for reason in skipped.values())
    summary = run("a")
    assert summary.videos == 1 and summary.ok == 2  # conv1: its two chunks
    reasons = set(summary.skipped.values())
    assert reasons == {"assistant 'a' is not a speaker of this video (its speakers: c, d); "
                       "skipped for good in this root, which holds one assistant policy"}
    lines = list(read_jsonl(tokens / "manifest.jsonl"))
    final = [r for r in lines if r["type"] == "video" and r["video_id"] == "conv2"]
    assert len(final) == 1 and final[0]["status"] == "skipped" and final[0]["reason"] in reasons
    again = run("a")  # nothing left to do: conv2 is not tried again
    assert again.skipped == {} and again.done_before == 4
    assert list(read_jsonl(tokens / "manifest.jsonl")) == lines
    assert {r["role"] for r in preprocess.stream_pieces(tokens)} == {"a"}
