"""The bundled demo podcast: small, in YouTube's formats, with transcripts that match the sound."""

import json

import numpy as np
import pytest

from speechlm_utils.audio import load_audio, probe

from .conftest import DEMO_DIR

TRANSCRIPTS = sorted(DEMO_DIR.glob("demo_ep_*.json"))
RATE_HZ = 16_000


def test_three_short_episodes_under_two_megabytes():
    assert len(TRANSCRIPTS) == 3
    media = [DEMO_DIR / json.loads(p.read_text())["media"] for p in TRANSCRIPTS]
    assert sum(m.stat().st_size for m in media) < 2 * 2**20
    codecs = {probe(m)["codec"] for m in media}
    assert codecs == {"opus", "aac"}  # as YouTube serves audio
    assert {m.suffix for m in media} == {".webm", ".m4a"}


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_word_times_are_ordered_and_inside_the_audio(path):
    transcript = json.loads(path.read_text())
    wav = load_audio(DEMO_DIR / transcript["media"], RATE_HZ)
    duration_s = wav.size / RATE_HZ
    assert 30 <= duration_s <= 65
    words = transcript["words"]
    assert len(words) > 50 and {w["speaker"] for w in words} == {"host", "guest"}
    for prev, word in zip(words, words[1:]):
        assert word["start_s"] >= prev["end_s"]
    for word in words:
        assert 0 <= word["start_s"] < word["end_s"] <= duration_s
        assert word["word"].strip()


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_word_times_match_the_sound(path):
    """Sound inside words, near-silence in the pauses between them: the times are true."""
    transcript = json.loads(path.read_text())
    wav = load_audio(DEMO_DIR / transcript["media"], RATE_HZ)

    def rms(a_s, b_s):
        seg = wav[int(a_s * RATE_HZ) : int(b_s * RATE_HZ)]
        return float(np.sqrt(np.mean(seg**2)))

    words = transcript["words"]
    pauses = [(a["end_s"] + 0.02, b["start_s"] - 0.02) for a, b in zip(words, words[1:])
              if b["start_s"] - a["end_s"] > 0.3]  # fmt: skip
    assert len(pauses) >= 5
    loud_words = np.median([rms(w["start_s"], w["end_s"]) for w in words])
    quiet_pauses = np.median([rms(a, b) for a, b in pauses])
    assert loud_words > 30 * quiet_pauses
    # onsets are sharp: the 30 ms after a word starts is louder than the 30 ms before it
    louder_after = [rms(w["start_s"], w["start_s"] + 0.03) > rms(w["start_s"] - 0.03, w["start_s"])
                    for w in words[1:]]  # fmt: skip
    assert np.mean(louder_after) > 0.9
