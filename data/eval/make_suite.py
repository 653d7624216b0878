"""Regenerate the offline demo suite: likelihood pairs spoken by the demo podcast's two voices.

Each item is a right and a wrong recording, like the hub suites (sWUGGY, sBLIMP, StoryCloze):
``lexical`` a word against a made-up one, ``syntax`` a sentence against its ungrammatical
twin, ``story`` a short story with its right and a wrong ending, ``memorised`` a sentence the
tiny demo run trained on against the same words in another order. Words are synthesized one
by one with espeak-ng exactly as the demo episodes were (`data/demo/make_demo.py`), so every
word's time is known; the transcripts go beside the audio, as the tiny profile's sidecar text.

Stored in the schema of the hub's sLM21 suites (``speed/sBLIMP``: ``id``, ``positive`` and
``negative`` audio, here as Opus bytes, ``positive_transcription`` and
``negative_transcription``), plus ``subset`` and the timed words as JSON (``positive_words``,
``negative_words``), so it loads through the same adapter as the hub suites. Needs espeak-ng
only to regenerate; the output (under 1 MB) is committed.

    python data/eval/make_suite.py     # writes data/eval/demo_suite/test.parquet
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "demo"))
sys.path.insert(0, str(HERE.parents[1]))
from make_demo import SAMPLE_RATE_HZ, VOICES, gap_after, synthesize_word  # noqa: E402

from speechlm_utils.audio import ffmpeg_exe  # noqa: E402

OUT = HERE / "demo_suite" / "test.parquet"
LEAD_S = 0.3  # silence before the first word, as in the episodes

# (subset, voice, right, wrong)
PAIRS = [
    ("lexical", "host", "bread", "brelk"),
    ("lexical", "guest", "flour", "flarn"),
    ("lexical", "host", "kitchen", "kitchom"),
    ("lexical", "guest", "pigeon", "pidgeel"),
    ("lexical", "host", "morning", "morlink"),
    ("lexical", "guest", "station", "stashum"),
    ("lexical", "host", "water", "wobter"),
    ("lexical", "guest", "language", "langwish"),
    ("lexical", "host", "thousands", "throusands"),
    ("lexical", "guest", "neighbour", "neighbrook"),
    ("syntax", "host", "The dough was flat.", "The dough were flat."),
    ("syntax", "guest", "They find their way home.", "They finds their way home."),
    ("syntax", "host", "My guest bakes bread.", "My guest bake bread."),
    ("syntax", "guest", "The pigeons are in every city.", "The pigeons is in every city."),
    ("syntax", "host", "She has fed the starter.", "She has feed the starter."),
    ("syntax", "guest", "The model learns to listen.", "The model learn to listen."),
    ("syntax", "host", "Who did you meet today?", "Who did you met today?"),
    ("syntax", "guest", "A codec squeezes the audio.", "A codec squeeze the audio."),
    ("story", "guest", "I fed the starter every day for a week. Then it lifted a whole loaf.",
     "I fed the starter every day for a week. Then it flew to the station."),
    ("story", "host", "The pigeon left the city at dawn. By night it was home again.",
     "The pigeon left the city at dawn. By night it was a loaf of bread."),
    ("story", "guest", "We turned the sound into tokens. Then the model learned to predict them.",
     "We turned the sound into tokens. Then the pigeons baked a crust."),
    ("story", "host", "The dough was flat and the crust was pale. The second loaf was better.",
     "The dough was flat and the crust was pale. The magnetic field was sour."),
    ("story", "guest", "It started to rain on the cliff. The birds hid under a ledge.",
     "It started to rain on the cliff. The birds learned to count tokens."),
    ("story", "host", "My neighbour gave me a jar of flour. I used it to bake my first bread.",
     "My neighbour gave me a jar of flour. I used it to train a language model."),
    ("memorised", "host", "Welcome back to the kitchen table.",
     "Welcome table to the kitchen back."),
    ("memorised", "host", "Today my guest bakes bread every single morning.",
     "Today my bread bakes guest every single morning."),
    ("memorised", "guest", "Thanks for having me.", "Me having for thanks."),
    ("memorised", "guest", "It started with a jar of flour and water.",
     "It started with a jar of water and flour."),
]


def speak(text: str, voice: str, workdir: Path) -> tuple[np.ndarray, list[dict]]:
    """``text`` word by word in ``voice``, joined as the episodes are: audio and timed words."""
    pieces = [np.zeros(int(LEAD_S * SAMPLE_RATE_HZ), np.float32)]
    cursor, words = pieces[0].size, []
    tokens = text.split()
    for i, word in enumerate(tokens):
        audio = synthesize_word(word, VOICES[voice], workdir)
        words.append({"word": word, "start_s": round(cursor / SAMPLE_RATE_HZ, 4),
                      "end_s": round((cursor + audio.size) / SAMPLE_RATE_HZ, 4)})  # fmt: skip
        gap = 0.3 if i == len(tokens) - 1 else gap_after(word)
        silence = np.zeros(int(gap * SAMPLE_RATE_HZ), np.float32)
        pieces += [audio, silence]
        cursor += audio.size + silence.size
    return np.concatenate(pieces), words


def opus_bytes(audio: np.ndarray) -> bytes:
    """Opus in Ogg at 24 kbit/s: small, and decoded by ffmpeg like any hub suite's audio."""
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "f32le",
           "-ar", str(SAMPLE_RATE_HZ), "-ac", "1", "-i", "pipe:0", "-c:a", "libopus",
           "-b:a", "24k", "-map_metadata", "-1", "-fflags", "+bitexact", "-f", "ogg", "-"]
    return subprocess.run(cmd, input=audio.astype(np.float32).tobytes(), capture_output=True,
                          check=True).stdout  # fmt: skip


def main() -> None:
    import datasets

    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to regenerate the suite: apt-get install espeak-ng")
    columns = ("id", "subset", "positive", "negative", "positive_transcription",
               "negative_transcription", "positive_words", "negative_words")
    rows = {k: [] for k in columns}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (subset, voice, right, wrong) in enumerate(PAIRS):
            rows["id"].append(f"{subset}-{n:03d}")
            rows["subset"].append(subset)
            for col, text in (("positive", right), ("negative", wrong)):
                audio, words = speak(text, voice, Path(tmp))
                name = f"{rows['id'][-1]}-{col}.ogg"
                rows[col].append({"bytes": opus_bytes(audio), "path": name})
                rows[f"{col}_words"].append(json.dumps(words))
                rows[f"{col}_transcription"].append(text)
    data = datasets.Dataset.from_dict(rows)
    for col in ("positive", "negative"):
        data = data.cast_column(col, datasets.Audio(decode=False))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    data.to_parquet(buffer)
    OUT.write_bytes(buffer.getvalue())
    print(f"{OUT}: {len(PAIRS)} items, {OUT.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
