"""Stage 03's run: resume, shards, bad chunks and content hashing."""

import json
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


@pytest.fixture()
def run(tiny_models, codec, aligner, text_tokenizer):
    def go(chunks, tokens, **kw):
        cfg = TokenizeConfig.from_profile("tiny", **{"workers": 0, **kw.pop("cfg", {})})
        return preprocess.run_tokenize(cfg, tiny_models, chunks, tokens, codec=codec,
                                       aligner=aligner, text_tokenizer=text_tokenizer,
                                       progress=False, **kw)  # fmt: skip

    return go


def outputs(tokens_root, manifest_glob="tokens*.jsonl"):
    """chunk -> (status, hash, file bytes) over all manifests."""
    result = {}
    for r in preprocess.read_token_manifests(tokens_root):
        data = (tokens_root / r["tokens"]).read_bytes() if r.get("tokens") else None
        result[r["chunk"]] = (r["status"], r.get("hash"), data)
    return result


def test_one_run_tokenizes_good_chunks_and_records_bad_ones(run, chunk_tree, tmp_path,
                                                           text_tokenizer):  # fmt: skip
    tokens = tmp_path / "tokens"
    summary = run(chunk_tree, tokens, cfg={"workers": 1})  # real worker processes
    assert summary.ok == 6
    records = {r["chunk"]: r for r in read_jsonl(tmp_path / "tokens.jsonl")}
    reasons = {c.split("/")[-1]: (r["status"], r["reason"]) for c, r in records.items()
               if r["status"] != "ok"}  # fmt: skip
    assert reasons["corrupt.webm"][0] == "failed" and "corrupt" in reasons["corrupt.webm"][1]
    assert reasons["empty.webm"] == ("failed", "empty file (0 bytes)")
    assert reasons["silent.webm"][0] == "skipped" and "silent" in reasons["silent.webm"][1]
    assert reasons["short.webm"][0] == "skipped" and "too short" in reasons["short.webm"][1]
    tok = SpeechTokenizer(text_tokenizer)
    for r in records.values():
        if r["status"] != "ok":
            continue
        ids = preprocess.load_tokens(tokens, r)
        assert ids.size == r["n_tokens"] and ids.size % 22 == 0
        assert np.load(tokens / r["tokens"]).dtype == np.uint16
        assert abs(ids.size / 55 - r["duration_s"]) < 0.4  # padded to a whole 400 ms group
        text, codes = tok.decode(ids)  # every file decodes
        assert codes.shape == (4, ids.size // 22 * 5)
        assert r["video_id"] in ("vidA", "vidB") and r["text_source"] == "whisper"


def test_resume_after_a_crash_equals_one_run(run, chunk_tree, tmp_path, monkeypatch):
    run(chunk_tree, tmp_path / "clean" / "tokens")
    crashed = tmp_path / "crashed" / "tokens"
    real = preprocess.SpeechTokenizer.encode
    calls = {"n": 0}

    def dies_on_the_fourth(self, codes, words):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, codes, words)

    monkeypatch.setattr(preprocess.SpeechTokenizer, "encode", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(chunk_tree, crashed, cfg={"batch_size": 2})
    monkeypatch.setattr(preprocess.SpeechTokenizer, "encode", real)
    partial = outputs(crashed)
    assert 0 < sum(s == "ok" for s, _, _ in partial.values()) < 6
    again = run(chunk_tree, crashed)
    assert again.done_before == len(partial)
    assert outputs(crashed) == outputs(tmp_path / "clean" / "tokens")
    assert run(chunk_tree, crashed).ok == 0  # nothing left to do


def test_shards_together_equal_one_run(run, chunk_tree, tmp_path):
    run(chunk_tree, tmp_path / "one" / "tokens")
    for i in range(3):
        run(chunk_tree, tmp_path / "sharded" / "tokens", shard=(i, 3))
    assert len(list((tmp_path / "sharded").glob("tokens.*-of-3.jsonl"))) >= 2
    assert outputs(tmp_path / "sharded" / "tokens") == outputs(tmp_path / "one" / "tokens")


def test_same_bytes_hash_alike_and_a_new_config_hashes_anew(run, chunk_tree, tmp_path):
    tree = tmp_path / "chunks"
    shutil.copytree(chunk_tree / "vi" / "vidA", tree / "vi" / "vidA")
    shutil.copytree(chunk_tree / "vi" / "vidA", tree / "co" / "copyA")  # same bytes, new video
    listing = json.loads((tree / "co" / "copyA" / "chunks.json").read_text())
    (tree / "co" / "copyA" / "chunks.json").write_text(json.dumps({**listing, "id": "copyA"}))
    run(tree, tmp_path / "tokens")
    records = list(read_jsonl(tmp_path / "tokens.jsonl"))
    by_name = {}
    for r in records:
        by_name.setdefault(r["chunk"].split("/")[-1], set()).add(r["hash"])
    assert all(len(hashes) == 1 for hashes in by_name.values())  # copy -> same hash
    relead = run(tree, tmp_path / "tokens", cfg={"text_lead_s": 1.0})
    assert relead.ok == sum(r["status"] == "ok" for r in records)  # a new config: new work...
    new = [r for r in read_jsonl(tmp_path / "tokens.jsonl")][len(records):]
    assert not {r["hash"] for r in new} & {r["hash"] for r in records}  # ...with new hashes


def test_torchrun_ranks_split_exactly_a_hosts_shard(run, chunk_tree, tmp_path):
    from speechlm_utils.manifest import in_shard

    keys = [f"video{i}" for i in range(300)]
    host = [k for k in keys if in_shard(k, (1, 3))]
    ranks = [[k for k in keys if in_shard(k, (1, 3), (r, 4))] for r in range(4)]
    assert sorted(sum(ranks, [])) == sorted(host) and all(ranks)  # a partition of the host's
    for r in range(2):  # two "GPUs" of one host write their own manifests
        run(chunk_tree, tmp_path / "ranks" / "tokens", rank=(r, 2))
    run(chunk_tree, tmp_path / "one" / "tokens")
    assert outputs(tmp_path / "ranks" / "tokens") == outputs(tmp_path / "one" / "tokens")
