"""Whisper's word times on real weights: the demo podcast's first 20 s against its true times.

The Whisper tests run only when ``$SPEECHLM_TEST_WHISPER`` names an openai-whisper checkpoint
file, e.g. the real "base" model (74 M parameters) that ``real-whisper-base/build OUT.pt``
makes; the tiny profile's random Whisper cannot be measured. Their thresholds are about twice
what ``benchmarks/bench_align.py`` measured with base (default alignment heads) on this chunk:
median start error 70 ms, p90 222 ms, 35 of 40 true words matched, WER 12 %; the true text
forced through the DTW: median 78 ms, every word matched. An untrained model is seconds off.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from speechlm_utils.align import Aligner, attention_map, word_error_rate, word_start_errors
from speechlm_utils.audio import WHISPER_SAMPLE_RATE_HZ, load_audio
from speechlm_utils.captions import parse_file
from speechlm_utils.config import ModelsConfig
from speechlm_utils.words import Word

from .conftest import DEMO_DIR

WHISPER_ENV = "SPEECHLM_TEST_WHISPER"
WHISPER = os.environ.get(WHISPER_ENV, "")
CHUNK_S = 20.0  # stage 03's chunk length
needs_real_whisper = pytest.mark.skipif(
    not (WHISPER and Path(WHISPER).is_file()),
    reason=f"${WHISPER_ENV} names no checkpoint file ({WHISPER!r}): build the real base model "
    "with real-whisper-base/build OUT.pt and set it to OUT.pt",
)


@pytest.fixture(scope="module")
def real_aligner() -> Aligner:
    models = ModelsConfig.from_profile("tiny", whisper=str(Path(WHISPER).resolve()))
    return Aligner.load(models, "cpu")


@pytest.fixture(scope="module")
def chunk() -> tuple:
    """The first 20 s of episode 1 (16 kHz) and the true words that start in them."""
    wav = load_audio(DEMO_DIR / "demo_ep_001.webm", WHISPER_SAMPLE_RATE_HZ)
    truth = [w for w in parse_file(DEMO_DIR / "demo_ep_001.json") if w.start_s < CHUNK_S]
    return wav[: int(CHUNK_S * WHISPER_SAMPLE_RATE_HZ)], truth


@pytest.fixture(scope="module")
def transcribed(real_aligner, chunk) -> list[Word]:
    return real_aligner.align([chunk[0]])[0]  # stage 03's path for a chunk of at most 30 s


@needs_real_whisper
def test_transcribed_words_start_near_their_true_times(transcribed, chunk):
    report = word_start_errors(transcribed, chunk[1])
    assert report["matched"] >= 0.75 * report["n_truth"], report
    assert report["median_abs_ms"] < 150, report  # under two Mimi frames
    assert report["p90_abs_ms"] < 400, report  # under one group of the token layout


@needs_real_whisper
def test_transcript_is_mostly_right(transcribed, chunk):
    assert word_error_rate(transcribed, chunk[1]) < 0.25, " ".join(w.text for w in transcribed)


@needs_real_whisper
def test_forced_true_text_starts_near_its_true_times(real_aligner, chunk):
    wav, truth = chunk
    forced = attention_map(real_aligner, wav, " ".join(w.text.strip() for w in truth))
    report = word_start_errors(forced.words, truth)
    assert report["matched"] == len(truth), report
    assert report["median_abs_ms"] < 150, report
    assert report["p90_abs_ms"] < 400, report


def test_word_error_rate_counts_edits_after_normalising():
    """Needs no real weights: substitutions, deletions and insertions over the true words."""

    def words(text: str) -> list[Word]:
        return [Word(" " + t, 0.0, 0.0) for t in text.split()]

    truth = words("The neighbour gave me flour.")  # five words
    assert word_error_rate(words("the neighbor gave me flour"), truth) == 0.0
    assert word_error_rate(words("her neighbour game me flour"), truth) == pytest.approx(2 / 5)
    assert word_error_rate(words("the neighbour gave flour"), truth) == pytest.approx(1 / 5)
    assert word_error_rate(words("the neighbour gave me flour you"), truth) == pytest.approx(1 / 5)
    assert word_error_rate([], truth) == 1.0
