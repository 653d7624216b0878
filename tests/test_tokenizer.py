"""Layout invariants and round trips of the interleaved token stream."""

import json

import numpy as np
import pytest
import sentencepiece as spm

from speechlm_utils.checkpoints import mistral_v1_tokenizer_file
from speechlm_utils.tokenizer import TEXT_KIND, SpeechTokenizer
from speechlm_utils.words import Word

from .conftest import DEMO_DIR

VOCAB = ("so the thing is we started baking bread every morning and honestly it was a mess "
         "pigeons cliffs railway station magnetic field tokens codec listen speak hello "
         "wonderful extraordinary isn't it? yes, no. well: maybe").split()  # fmt: skip


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(mistral_v1_tokenizer_file()))


def random_words(rng, duration_s, words_per_s, start_s=0.0):
    n = int(duration_s * words_per_s)
    starts = np.sort(rng.uniform(start_s, start_s + duration_s, n))
    return [Word(str(rng.choice(VOCAB)), float(s), float(s) + 0.1) for s in starts]


def running_text(words):
    return " ".join(w.text.strip() for w in words)


def test_vocabulary_layout_for_mistral_v1(sp):
    lay = SpeechTokenizer(sp).layout
    assert lay.text_vocab_size == 32_000  # read from the tokenizer, not hard-coded
    assert lay.id_range(1) == (32_000, 32_000 + 2048)
    assert lay.id_range(4) == (32_000 + 3 * 2048, 32_000 + 4 * 2048)
    assert lay.text_pad_id == 32_000 + 4 * 2048 and lay.vocab_size == lay.text_pad_id + 1
    assert lay.padded_vocab_size % 64 == 0 and lay.padded_vocab_size >= lay.vocab_size
    assert lay.group_len == 22 and lay.tokens_per_s == pytest.approx(55.0)
    assert lay.storage_dtype == np.uint16


@pytest.mark.parametrize("seed", range(8))
def test_random_round_trips_and_position_tells_the_kind(sp, seed):
    rng = np.random.default_rng(seed)
    tok = SpeechTokenizer(sp)
    lay = tok.layout
    duration_s = float(rng.choice([0.4, 4.0, 20.0, 31.2]))
    frames = round(duration_s * 12.5)
    codes = rng.integers(0, 2048, (4, frames))
    words = random_words(rng, duration_s, rng.uniform(0.5, 3.0))
    enc = tok.encode(codes, words)
    ids = enc.ids
    assert ids.size == round(55 * duration_s)  # 55 tokens per second
    assert ids.min() >= 0 and ids.max() < lay.vocab_size
    assert np.array_equal(lay.kinds(ids.size), lay.kinds_of_ids(ids))  # position -> kind
    masks = lay.kind_masks()
    assert masks[lay.kinds(ids.size), ids].all()  # every id allowed where it stands
    text, decoded = tok.decode(ids)
    assert np.array_equal(decoded, codes)  # exact codes back
    assert enc.stats["overflow_tokens"] == 0
    assert text == running_text(words)  # every word, in order


def test_fast_speech_spills_instead_of_dropping(sp):
    rng = np.random.default_rng(1)
    tok = SpeechTokenizer(sp)
    words = random_words(rng, 3.0, 8.0, start_s=8.0)  # a 3 s burst at 8 words/s
    enc = tok.encode(rng.integers(0, 2048, (4, 250)), words)
    text, _ = tok.decode(enc.ids)
    assert text == running_text(words) and enc.stats["overflow_tokens"] == 0
    assert enc.stats["max_lag_s"] > 1.0  # the spill is measured and reported
    for a, b in zip(enc.placements, enc.placements[1:]):
        assert b["slot"] > a["slot"]  # order kept


def test_sustained_overload_is_reported_and_more_slots_fix_it(sp):
    rng = np.random.default_rng(2)
    words = random_words(rng, 20.0, 8.0)  # 8 words/s for 20 s: ~10 tokens/s, 5 slots/s
    codes = rng.integers(0, 2048, (4, 250))
    enc = SpeechTokenizer(sp).encode(codes, words)
    text, _ = SpeechTokenizer(sp).decode(enc.ids)
    missing = enc.stats["text_tokens"] - len(enc.placements)
    assert missing == enc.stats["overflow_tokens"] > 0  # counted, never silent
    assert running_text(words).startswith(text.rstrip())  # what fits is a clean prefix
    roomy = SpeechTokenizer(sp, text_slots_per_group=6)  # a parameter, not a constant
    enc4 = roomy.encode(codes, words)
    assert enc4.stats["overflow_tokens"] == 0
    assert roomy.decode(enc4.ids)[0] == running_text(words)


@pytest.mark.parametrize("episode", sorted(DEMO_DIR.glob("demo_ep_*.json")), ids=lambda p: p.stem)
def test_demo_words_land_where_the_lead_predicts(sp, episode):
    truth = json.loads(episode.read_text())
    words = [Word(w["word"], w["start_s"], w["end_s"]) for w in truth["words"]
             if w["start_s"] < 20.0]  # fmt: skip
    tok = SpeechTokenizer(sp, text_lead_s=2.0)
    enc = tok.encode(np.zeros((4, 250), dtype=int), words)
    S, gdur = 2, 0.4
    on_time = 0
    for i, p in enumerate(enc.placements):
        target = max(0, int((words[p["word"]].start_s - 2.0) // gdur))
        group = p["slot"] // S
        assert group >= target  # text never comes later than the lead allows...
        if group > target:  # ...and when it is late, it is because the slot before was taken
            assert i > 0 and enc.placements[i - 1]["slot"] == p["slot"] - 1
        on_time += group == target
    assert on_time / len(enc.placements) > 0.5
    assert tok.decode(enc.ids)[0] == running_text(words)


def test_lead_zero_puts_text_in_the_group_of_the_sound(sp):
    tok = SpeechTokenizer(sp, text_lead_s=0.0)
    words = [Word("hello", 1.25, 1.6), Word("there", 6.1, 6.4)]

    def first_groups(enc):
        firsts = {}
        for p in enc.placements:
            firsts.setdefault(p["word"], p["slot"] // 2)
        return [firsts[0], firsts[1]]

    enc = tok.encode(np.zeros((4, 100), dtype=int), words)
    assert first_groups(enc) == [int(1.25 // 0.4), int(6.1 // 0.4)]
    late = SpeechTokenizer(sp, text_lead_s=2.0).encode(np.zeros((4, 100), dtype=int), words)
    assert first_groups(late) == [0, int((6.1 - 2.0) // 0.4)]


@pytest.mark.parametrize("K,F,S", [(1, 1, 1), (8, 2, 1), (2, 10, 3), (4, 5, 2)])
def test_other_group_shapes(sp, K, F, S):
    rng = np.random.default_rng(K * 100 + F * 10 + S)
    tok = SpeechTokenizer(sp, num_codebooks=K, frames_per_group=F, text_slots_per_group=S)
    lay = tok.layout
    assert lay.group_len == S + F * K
    codes = rng.integers(0, 2048, (K, F * 7))
    words = random_words(rng, F * 7 / 12.5, 1.0)
    enc = tok.encode(codes, words)
    assert np.array_equal(lay.kinds(enc.ids.size), lay.kinds_of_ids(enc.ids))
    text, back = tok.decode(enc.ids)
    assert np.array_equal(back, codes)
    if enc.stats["overflow_tokens"] == 0:
        assert text == running_text(words)


def test_whisper_style_and_transcript_style_words_tokenize_alike(sp):
    tok = SpeechTokenizer(sp)
    whisper_style = [Word(" Hello", 0, 1), Word(" world,", 1, 2), Word(" it's", 2, 3)]
    plain = [Word("Hello", 0, 1), Word("world,", 1, 2), Word("it's", 2, 3)]
    assert tok.tokenize_words(whisper_style) == tok.tokenize_words(plain)
    ids, owners = tok.tokenize_words(plain)
    assert ids == sp.encode("Hello world, it's") and owners == sorted(owners)
    assert owners[-1] == 2 and owners[0] == 0


def test_errors_are_clear(sp):
    tok = SpeechTokenizer(sp)
    with pytest.raises(ValueError, match="whole number of 5-frame groups"):
        tok.encode(np.zeros((4, 12), dtype=int), [])
    with pytest.raises(ValueError, match=r"codes must be \[K=4"):
        tok.encode(np.zeros((3, 10), dtype=int), [])
    ids = tok.encode(np.zeros((4, 5), dtype=int), []).ids
    ids[5] = 7  # a text id where an audio code belongs
    with pytest.raises(ValueError, match="position 5"):
        tok.decode(ids)


def test_partial_trailing_group_decodes_whole_frames(sp):
    tok = SpeechTokenizer(sp)
    codes = np.arange(40).reshape(4, 10) % 2048
    ids = tok.encode(codes, []).ids
    text, back = tok.decode(ids[: 22 + 2 + 4 * 3 + 2])  # a group, then 3 frames and a half
    assert back.shape == (4, 8) and np.array_equal(back, codes[:, :8]) and text == ""


def test_masks_allow_exactly_one_range_per_kind(sp):
    lay = SpeechTokenizer(sp).layout
    masks = lay.kind_masks()
    assert masks.shape == (5, lay.padded_vocab_size)
    assert masks[TEXT_KIND].sum() == 32_000 + 1  # text and TEXT_PAD
    assert all(masks[k].sum() == 2048 for k in range(1, 5))
    assert not (masks[1:].sum(0) > 1).any()  # codebooks never overlap
    assert not masks[:, lay.vocab_size :].any()  # padding rows are never allowed


def test_explain_group_gives_each_position_its_kind_and_mask(sp):
    tok = SpeechTokenizer(sp)
    lay = tok.layout
    codes = np.arange(4 * 10).reshape(4, 10) + 100  # code c of codebook k, frame f: 100 + 10k + f
    words = [Word("Hello", 2.1, 2.4)]  # text lead 2 s: its tokens go into group 0
    ids = tok.encode(codes, words).ids
    rows = tok.explain_group(ids, group=1)
    assert [r["position"] for r in rows] == list(range(22, 44))
    assert [r["kind"] for r in rows[:2]] == ["TEXT_PAD", "TEXT_PAD"]  # "Hello" went to group 0
    assert rows[2]["kind"] == "codebook 0" and rows[2]["holds"] == "frame 0, code 105"
    assert rows[5]["kind"] == "codebook 3" and rows[5]["holds"] == "frame 0, code 135"
    assert rows[-1]["holds"] == "frame 4, code 139"
    assert rows[0]["allowed"] == f"[0, 32000) + {lay.text_pad_id}"
    assert rows[0]["n_allowed"] == 32_001
    assert rows[3]["allowed"] == f"[{32_000 + 2048}, {32_000 + 2 * 2048})"
    assert all(r["id_allowed"] for r in rows)
    first = tok.explain_group(ids, group=0)
    assert first[0]["kind"] == "text" and first[0]["holds"] == sp.id_to_piece(int(ids[0]))
    with pytest.raises(ValueError, match="outside"):
        tok.explain_group(ids, group=2)


# -- the duplex layout (two speaker streams) ------------------------------------------------


@pytest.mark.parametrize("user_codebooks", [1, 4])
def test_duplex_layout_ids_kinds_and_rate(sp, user_codebooks):
    mono = SpeechTokenizer(sp)
    tok = SpeechTokenizer(sp, user_codebooks=user_codebooks)
    lay, K = tok.layout, 4
    assert lay.duplex and not mono.layout.duplex
    assert lay.group_len == 2 + 5 * (K + user_codebooks)
    assert lay.tokens_per_s == pytest.approx((2 + 5 * (K + user_codebooks)) / 0.4)
    for k in range(1, K + 1):  # the assistant's ids are the mono layout's
        assert lay.id_range(k) == mono.layout.id_range(k) and not lay.is_user_kind(k)
    for j in range(user_codebooks):  # the user's follow, derived from the sizes
        kind = K + 1 + j
        assert lay.is_user_kind(kind)
        assert lay.id_range(kind) == (32_000 + (K + j) * 2048, 32_000 + (K + j + 1) * 2048)
    assert lay.text_pad_id == 32_000 + (K + user_codebooks) * 2048
    masks = lay.kind_masks()
    assert masks.shape == (lay.num_kinds, lay.padded_vocab_size)
    assert (masks.sum(0) <= 1).all()  # no id belongs to two kinds
    assert "user_codebooks" not in mono.fingerprint()  # mono token roots stay valid
    assert tok.fingerprint()["user_codebooks"] == user_codebooks
    again = SpeechTokenizer.from_fingerprint(sp, tok.fingerprint())
    assert again.layout == lay


@pytest.mark.parametrize("user_codebooks", [1, 2])
def test_duplex_round_trip_is_exact_and_every_id_is_of_its_kind(sp, user_codebooks):
    rng = np.random.default_rng(user_codebooks)
    tok = SpeechTokenizer(sp, user_codebooks=user_codebooks)
    lay = tok.layout
    codes = rng.integers(0, 2048, (4, 50))
    user = rng.integers(0, 2048, (user_codebooks, 50))
    words = random_words(rng, 4.0, 3.0)
    ids = tok.encode(codes, words, user).ids
    assert ids.size == 10 * lay.group_len
    assert (lay.kinds_of_ids(ids) == lay.kinds(ids.size)).all()
    text, got, got_user = tok.decode_streams(ids)
    assert (got == codes).all() and (got_user == user).all()
    assert text == running_text(words)
    from speechlm_utils.duplex import stored_user_groups

    groups = stored_user_groups(lay, ids[: ids.size - 3])  # a part group at the end is dropped
    assert len(groups) == 9 and all((g == user[:, 5 * i : 5 * i + 5]).all()
                                    for i, g in enumerate(groups))  # fmt: skip
    frame = ids[2 : 2 + lay.frame_len] - lay.audio_offset  # frame 0: K then K_user
    assert list(frame % 2048) == [*codes[:, 0], *user[:, 0]]
    with pytest.raises(ValueError, match="needs user_codes"):
        tok.encode(codes, words)
    with pytest.raises(ValueError, match="K_user"):
        tok.encode(codes, words, user[:, :10])
