"""Stage 05: model surgery, data windows, the weighted loss, resume, LoRA and torchrun."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from speechlm_utils import data, train
from speechlm_utils import model as speech_model
from speechlm_utils.config import ModelsConfig, TrainConfig
from speechlm_utils.generate import Sampling, generate
from speechlm_utils.manifest import write_json_atomic
from speechlm_utils.tokenizer import SpeechTokenizer, TokenLayout
from speechlm_utils.words import Word

from .conftest import DEMO_DIR, REPO

CHUNK_GROUPS = 50  # 20 s chunks


def make_tokens(root, tokenizer, videos=3, chunks=2, seed=0, lm=None):
    """A token root like `tokenize` writes (layout.json, pieces, manifest), from random codes
    and demo words; each chunk is one piece of its video's stream."""
    rng = np.random.default_rng(seed)
    truth = json.loads((DEMO_DIR / "demo_ep_001.json").read_text())["words"]
    tokens = root / "tokens"
    digest = "synthetic01"
    lm = lm or ModelsConfig.from_profile("tiny", data_dir=REPO / "data" / "tiny").lm
    write_json_atomic(tokens / "layout.json", {"digest": digest, **tokenizer.fingerprint(),
                                               "text_source": "sidecar", "lm": lm})  # fmt: skip
    lines = []
    for v in range(videos):
        for c in range(chunks):
            words = [Word(w["word"], w["start_s"] - 20 * c, w["end_s"] - 20 * c) for w in truth
                     if 20 * c <= w["start_s"] < 20 * (c + 1)]  # fmt: skip
            codes = rng.integers(0, 2048, (4, CHUNK_GROUPS * 5))
            user = rng.integers(0, 2048, (tokenizer.layout.user_codebooks, CHUNK_GROUPS * 5))
            ids = tokenizer.encode(codes, words, user if tokenizer.layout.duplex else None).ids
            rel = f"{v:02d}/v{v}c{c}.npy"
            (tokens / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(tokens / rel, ids.astype(np.uint16))
            lines.append({"type": "piece", "chunk": f"vi/vid{v}/vid{v}_{c:05d}.webm",
                          "video_id": f"vid{v}", "stream": 0, "piece": c, "config": digest,
                          "status": "ok", "tokens": rel, "n_tokens": int(ids.size),
                          "duration_s": 20.0, "start_s": 20.0 * c, "chunk_start_s": 20.0 * c,
                          "words": [[w.text, w.start_s, w.end_s, 1.0] for w in words]})  # fmt: skip
        lines.append({"type": "video", "video_id": f"vid{v}", "status": "done"})
    (tokens / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return tokens


@pytest.fixture(scope="module")
def tok(text_tokenizer):
    return SpeechTokenizer(text_tokenizer)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, tok):
    return make_tokens(tmp_path_factory.mktemp("tok"), tok)


def cfg(**kw):
    base = dict(wandb_mode="disabled", seq_len=220, batch_size=2, max_steps=6, warmup_steps=2,
                eval_every=1000, save_every=1000, train_chunks=None, val_fraction=0.34)
    return TrainConfig.from_profile("tiny", **{**base, **kw})


def test_windows_split_by_video_start_at_groups_and_never_pad(tokens, tok):
    splits = data.load_splits(tokens, tok.layout, 220, val_fraction=0.34)
    assert splits.val_videos and not splits.val_videos & splits.train_videos
    assert splits.padding_tokens == 0 and splits.packing_efficiency == 1.0
    for part in (splits.train, splits.val):
        for i in range(len(part)):
            ids = part[i]["input_ids"].numpy()
            assert ids.size == 220
            assert np.array_equal(tok.layout.kinds(220), tok.layout.kinds_of_ids(ids))
    val_files = {p[0].name for w in splits.val.windows for p in w.pieces}
    train_files = {p[0].name for w in splits.train.windows for p in w.pieces}
    assert not val_files & train_files  # no episode on both sides
    # one video's two chunks form one stream: windows cross the chunk boundary
    crossing = data.load_splits(tokens, tok.layout, 22 * 15, val_fraction=0.34)
    assert any(len(w.pieces) == 2 for w in crossing.train.windows)
    assert crossing.padding_tokens == 0
    with pytest.raises(ValueError, match="multiple of the group length"):
        data.load_splits(tokens, tok.layout, 230)


def test_short_data_is_packed_then_padded_only_at_the_end(tokens, tok):
    splits = data.load_splits(tokens, tok.layout, 22 * 120, val_fraction=0.0)  # > any video
    assert len(splits.train) == 3  # three 100-group videos packed into 120-group windows
    assert splits.padding_tokens == 0  # the last one is filled from the start, not padded
    assert all((splits.train[i]["labels"].numpy() != data.IGNORE).all() for i in range(3))
    one = data.load_splits(tokens, tok.layout, 22 * 400, val_fraction=0.0)
    assert len(one.train) == 1 and one.padding_tokens == 22 * 100  # all data < one window
    labels = one.train[0]["labels"].numpy()
    assert (labels == data.IGNORE).sum() == 22 * 100 and (labels[:22 * 300] >= 0).all()


def test_new_rows_start_at_the_text_mean(tiny_models, tok):
    lm = speech_model.build_speech_lm(tiny_models, tok.layout)
    table = lm.get_input_embeddings().weight
    assert table.shape[0] == tok.layout.padded_vocab_size
    text_mean = table[: tok.layout.text_vocab_size].mean(0)
    new = table[tok.layout.text_vocab_size :]
    assert torch.allclose(new.mean(0), text_mean, atol=0.02)
    assert not torch.equal(new[0], new[1])  # distinguishable


def test_pruning_keeps_the_expected_layers(tiny_models, tok):
    full = speech_model.build_speech_lm(tiny_models, tok.layout)
    pruned = speech_model.build_speech_lm(tiny_models, tok.layout, keep_every=2)
    assert len(pruned.model.layers) == 2 and pruned.config.num_hidden_layers == 2
    for new, old in zip(pruned.model.layers, [full.model.layers[0], full.model.layers[2]]):
        for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items()):
            assert torch.equal(a, b), name  # loaded from the checkpoint's layer 2, not 1
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    chosen = speech_model.build_speech_lm(tiny_models, tok.layout, keep_layers=[1, 3])
    assert torch.equal(chosen.model.layers[1].mlp.up_proj.weight,
                       full.model.layers[3].mlp.up_proj.weight)  # fmt: skip
    with torch.no_grad():  # generation with a pruned model keeps a correct KV cache
        out = generate(pruned.eval(), tok.layout, torch.arange(22) % 100, 30, Sampling.greedy())
        assert out == generate(pruned, tok.layout, torch.arange(22) % 100, 30, Sampling.greedy(),
                               use_cache=False)  # fmt: skip
    with pytest.raises(ValueError, match="increasing indices"):
        speech_model.build_speech_lm(tiny_models, tok.layout, keep_layers=[3, 1])


def test_a_sharded_checkpoint_loads_the_same_pruned_and_extended(tiny_models, tok, tmp_path):
    """As hub repos store 7B: several safetensors files and an index; the kept layers and the
    text rows of both tables are read from whichever file holds them."""
    import shutil

    from transformers import MistralForCausalLM

    sharded = tmp_path / "sharded"
    MistralForCausalLM.from_pretrained(tiny_models.lm).save_pretrained(sharded,
                                                                      max_shard_size="2MB")
    shutil.copy(Path(tiny_models.lm) / "tokenizer.model", sharded)
    assert len(list(sharded.glob("*.safetensors"))) > 2
    assert (sharded / "model.safetensors.index.json").exists()
    other = tiny_models.replace(lm=str(sharded), chosen=("lm",))
    a = speech_model.build_speech_lm(tiny_models, tok.layout, keep_layers=[1, 3])
    b = speech_model.build_speech_lm(other, tok.layout, keep_layers=[1, 3])
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_lora_trains_only_adapters_and_new_rows_and_reloads(tiny_models, tok, tokens, tmp_path):
    trainer = train.Trainer(cfg(lora_r=4, lr=1e-2), tiny_models, tokens, tmp_path / "run")
    trainable = {n: p.numel() for n, p in trainer.lm.named_parameters() if p.requires_grad}
    hidden, layers, r = 128, 4, 4
    per_layer = r * (128 + 128) + r * (128 + 64) * 2 + r * (128 + 128) + \
        r * (128 + 384) * 3  # q, k+v (GQA: 2 heads x 32), o, gate+up+down  # fmt: skip
    new_rows = tok.layout.vocab_size - tok.layout.text_vocab_size
    assert sum(trainable.values()) == layers * per_layer + 2 * new_rows * hidden
    assert all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    up_proj = trainer.lm.get_base_model().model.layers[0].mlp.up_proj
    frozen_before = up_proj.base_layer.weight.clone()
    trainer.fit(max_steps=3, progress=False)
    after = up_proj.base_layer.weight
    assert torch.equal(frozen_before, after)  # the base stays frozen
    merged, _ = train.load_run(tmp_path / "run", tiny_models)  # chat: adapters folded in
    unmerged, _ = train.load_run(tmp_path / "run", tiny_models, merge=False)
    assert not hasattr(merged, "peft_config") and hasattr(unmerged, "peft_config")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = trainer.splits.train[0]["input_ids"][None]
    trainer.lm.eval()
    with torch.no_grad():
        trained = trainer.lm(ids).logits
        assert torch.allclose(trained, unmerged(ids).logits, atol=1e-5)
        assert torch.allclose(trained, merged(ids).logits, atol=1e-4)
    # the merge had something to fold in: training moved LoRA's B away from its zero init
    assert any(p.abs().sum() > 0 for n, p in trainer.lm.named_parameters() if "lora_B" in n)


def test_a_zero_weight_removes_that_kinds_gradient(tiny_models, tok, tokens):
    lm = speech_model.build_speech_lm(tiny_models, tok.layout)
    batch = data.load_splits(tokens, tok.layout, 220).train[0]
    ids, labels = batch["input_ids"][None], batch["labels"][None]
    T = tok.layout.text_vocab_size

    def head_grad(weights, labels=labels):
        lm.zero_grad()
        loss, parts = train.SpeechLMObjective(lm, tok.layout, weights)(ids, labels)
        loss.backward()
        return lm.lm_head.weight.grad.clone(), float(loss.detach()), parts

    g_all, _, parts = head_grad((1.0, 1.0, 1.0, 1.0))
    g_slots0, _, _ = head_grad((0.0, 0.0, 1.0, 1.0))  # word choice and pad decision both off
    g_sem0, _, _ = head_grad((1.0, 1.0, 0.0, 1.0))
    assert g_all[:T].abs().sum() > 0 and g_slots0[:T].abs().sum() == 0  # no text gradient
    sem = slice(T, T + 2048)
    assert g_all[sem].abs().sum() > 0 and g_sem0[sem].abs().sum() == 0  # no semantic gradient
    assert g_sem0[T + 2048 : T + 4096].abs().sum() > 0  # acoustic still learns
    # equal weights: the plain mean cross-entropy, and the logged parts add up to it
    _, loss_equal, _ = head_grad((1.0, 1.0, 1.0, 1.0))
    sums, counts = parts[:, 0], parts[:, 1]
    classes = train.loss_classes(tok.layout, labels)[:, 1:]
    words = int((classes == 0).sum())
    assert loss_equal == pytest.approx(float(sums.sum() / (counts.sum() + words)), rel=1e-5)
    # weight 0 on both text terms == the text slots removed from the batch altogether
    masked = labels.masked_fill(train.loss_classes(tok.layout, labels) <= 1, data.IGNORE)
    g_masked, loss_masked, _ = head_grad((1.0, 1.0, 1.0, 1.0), masked)
    g_text0, loss_text0, _ = head_grad((0.0, 0.0, 1.0, 1.0))
    assert torch.allclose(g_text0, g_masked, atol=1e-7) and loss_text0 == pytest.approx(loss_masked)


@pytest.mark.parametrize("weights", [(1.0, 0.5, 1.0, 0.5), (1.0, 0.1, 1.0, 0.5), (3.0, 1.0, 1, 1)])
def test_the_weighted_loss_keeps_the_pad_odds_of_the_data(tok, weights):
    """Fit on a stream whose text slots are TEXT_PAD 54 % of the time: the model samples pads
    54 % of the time whatever the weights (a per-class pad weight of 0.1 would teach 11 %)."""
    from speechlm_utils.generate import _pick

    logits, pad_id = train.fit_text_slot_odds(0.54, weights)
    assert float(logits.softmax(-1)[pad_id]) == pytest.approx(0.54, abs=0.03)
    gen = torch.Generator().manual_seed(0)  # sample as generation does
    draws = [int(_pick(logits, 1.0, 0, 1.0, gen)) for _ in range(2000)]
    assert np.mean(np.array(draws) == pad_id) == pytest.approx(0.54, abs=0.04)
    assert train.class_weighted_pad_odds(0.54, 0.1) == pytest.approx(0.105, abs=0.005)


def test_training_refuses_tokens_of_another_text_tokenizer(tiny_models, tok, tmp_path):
    tokens = make_tokens(tmp_path, tok, videos=2, chunks=1, lm="mistralai/Mistral-7B-v0.3")
    layout = json.loads((tokens / "layout.json").read_text())
    layout["text_tokenizer_sha1"] = "0123456789abcdef"  # as if made with v0.3's tokenizer
    write_json_atomic(tokens / "layout.json", layout)
    with pytest.raises(train.FingerprintError, match="0123456789abcdef") as err:
        # the LM chosen on purpose (--lm): training does not follow the tokens' to v0.3
        train.Trainer(cfg(), tiny_models.replace(chosen=("lm",)), tokens, tmp_path / "run")
    assert tok.fingerprint()["text_tokenizer_sha1"] in str(err.value)  # names both
    assert "Mistral-7B-v0.3" in str(err.value)


def test_resume_continues_the_same_run(tiny_models, tokens, tmp_path, capsys):
    straight = train.Trainer(cfg(max_steps=8, save_every=4), tiny_models, tokens, tmp_path / "a")
    losses_a = [h["loss"] for h in straight.fit(progress=False).history]

    first = train.Trainer(cfg(max_steps=8, save_every=4), tiny_models, tokens, tmp_path / "b")
    first.fit(stop_after=3, progress=False)  # `train --stop-after 3`: as if it crashed there
    assert not (tmp_path / "b" / "final").exists()  # stopped, not finished
    second = train.Trainer(cfg(max_steps=8, save_every=4), tiny_models, tokens, tmp_path / "b")
    losses_b = [h["loss"] for h in second.fit(resume=True, progress=False).history]
    assert second.step == 8 and len(losses_b) == 5
    assert losses_b == losses_a[3:]  # bit for bit on CPU: the schedule did not change
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step-0000003", "step-0000004", "step-0000008"] and not list(
        (tmp_path / "b" / "checkpoints").glob(".tmp*"))
    weights = tmp_path / "b" / "final" / "weights.pt"
    written = weights.stat().st_mtime_ns
    again = train.Trainer(cfg(max_steps=8, save_every=4), tiny_models, tokens, tmp_path / "b")
    capsys.readouterr()
    assert again.fit(resume=True).steps == 8  # a finished run fitted again:
    assert weights.stat().st_mtime_ns == written  # final/ not rewritten (stage 07 keys on it)
    out = capsys.readouterr()
    assert "at step 8 of 8 already" in out.out and "step/s" not in out.err  # and no bar


def test_gradient_checkpointing_really_recomputes(tiny_models, tokens, tmp_path, monkeypatch):
    from transformers.models.mistral import modeling_mistral

    calls = []
    forward = modeling_mistral.MistralMLP.forward

    def counted(self, x):  # (module hooks do not fire in the recompute, so patch forward)
        calls.append(1)
        return forward(self, x)

    monkeypatch.setattr(modeling_mistral.MistralMLP, "forward", counted)
    for enabled, per_layer in ((False, 1), (True, 2)):  # forward, and again in backward
        calls.clear()
        trainer = train.Trainer(cfg(grad_checkpointing=enabled), tiny_models, tokens,
                                tmp_path / f"gc{enabled}")  # fmt: skip
        trainer.train_step()
        assert len(calls) == per_layer * 4 * trainer.cfg.grad_accum


def test_overfit_then_greedy_reproduces_the_continuation(tiny_models, tokens, tmp_path, tok):
    c = cfg(train_chunks=1, max_steps=110, lr=1e-2, warmup_steps=10, seq_len=440,
            batch_size=3)  # fmt: skip
    trainer = train.Trainer(c, tiny_models, tokens, tmp_path / "overfit")
    result = trainer.fit(progress=False)
    assert result.last("loss") < 0.05
    lm, _ = train.load_run(tmp_path / "overfit", tiny_models)
    window = trainer.splits.train[0]["input_ids"]
    prompt, truth = window[: 10 * 22], window[10 * 22 : 15 * 22]
    out = generate(lm, tok.layout, prompt, truth.numel(), Sampling.greedy())
    assert out == truth.tolist()  # memorised exactly: text slots and codes
    text, codes = tok.decode(np.array(out))
    assert codes.shape == (4, 25)


def test_wandb_offline_logs_metrics_and_a_sample(tiny_models, tokens, tmp_path):
    run = tmp_path / "wb"
    c = cfg(wandb_mode="offline", max_steps=2, sample_every=2, eval_every=2)
    trainer = train.Trainer(c, tiny_models, tokens, run)
    trainer.fit(progress=False, sample_fn=train.make_sample_fn(tiny_models, 0.8, 0.8))
    metrics = train.read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2] and "val_loss_text" in metrics[1]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))
    assert list(offline[0].rglob("*.wav"))  # the audio sample was logged


def torchrun_train(tokens, run, port: str, *flags: str, ok: bool = True,
                   timeout: int = 600) -> subprocess.CompletedProcess:  # fmt: skip
    """`train` on two gloo processes (CPU), the tiny profile (later flags win)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", port, "-m", "speechlm_utils", "--profile", "tiny",
           "--data-dir", str(REPO / "data" / "tiny"), "train", "--tokens", str(tokens),
           "--run-dir", str(run), "--max-steps", "4", "--seq-len", "220",
           "--batch-size", "2", "--wandb", "disabled", *flags]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_ddp_and_fsdp_on_two_cpu_processes_agree(tokens, tmp_path):
    losses = {}
    for mode, port in (("ddp", "29517"), ("fsdp", "29518")):
        run = tmp_path / mode  # two micro-batches a step: gradients sync on the last only
        torchrun_train(tokens, run, port, "--grad-accum", "2",
                       *(["--fsdp"] if mode == "fsdp" else []))  # fmt: skip
        metrics = train.read_metrics(run)
        synced = [m for m in metrics if "ranks_in_sync" in m]
        assert synced and all(m["ranks_in_sync"] for m in synced)  # same weights on both ranks
        assert (run / "final" / "weights.pt").exists()
        losses[mode] = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses["ddp"]) == 4
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-4)  # sharding changes nothing


def test_fsdp_resumes_each_ranks_optimizer_shard(tokens, tmp_path):
    """Stopped after step 2 and resumed, a 2-rank FSDP run gives the straight run's losses:
    each rank's Adam state comes back from its own shard (torch.distributed.checkpoint)."""
    torchrun_train(tokens, tmp_path / "straight", "29519", "--fsdp", "--save-every", "2")
    torchrun_train(tokens, tmp_path / "resumed", "29520", "--fsdp", "--save-every", "2",
                   "--stop-after", "2")  # fmt: skip
    assert not (tmp_path / "resumed" / "final").exists()
    torchrun_train(tokens, tmp_path / "resumed", "29521", "--fsdp", "--save-every", "2",
                   "--resume")  # fmt: skip
    straight = [m["loss"] for m in train.read_metrics(tmp_path / "straight") if "loss" in m]
    resumed = [m["loss"] for m in train.read_metrics(tmp_path / "resumed") if "loss" in m]
    assert len(straight) == 4 and resumed == straight  # bit for bit on CPU
    assert list((tmp_path / "resumed" / "checkpoints" / "step-0000002" / "optimizer").iterdir())


def test_load_run_uses_the_recorded_lm_and_checks_its_tokenizer(tiny_models, tokens, tmp_path):
    run = tmp_path / "run"
    train.Trainer(cfg(max_steps=1), tiny_models, tokens, run).fit(progress=False)
    other = tiny_models.replace(lm=str(tmp_path / "some-other-lm"))  # not the run's
    model, tokenizer = train.load_run(run, other)
    assert model.config.num_hidden_layers == 4  # rebuilt from the LM the run recorded
    meta = json.loads((run / "run.json").read_text())
    assert meta["lm"] == tiny_models.lm
    meta["layout"]["text_tokenizer_sha1"] = "feedfacefeedface"  # as if trained on v0.3
    write_json_atomic(run / "run.json", meta)
    with pytest.raises(train.FingerprintError, match="feedfacefeedface"):
        train.load_run(run, tiny_models)


def test_recipes_per_gpu_are_planned_and_stated():
    a100 = train.recipe_for_gpu("A100-SXM4-80GB", 85.0, True)
    assert "Chat (notebook 06): fits" in a100
    assert "--lora-r 64 --seq-len 4092 --batch-size 4" in a100
    t4 = train.recipe_for_gpu("Tesla T4", 15.8, False)
    assert "does not fit" in t4 and "--keep-every 2" in t4 and "fp16" in t4  # honest about T4
    # every recipe's plan grows with what it keeps
    plans = [train.training_memory(TokenLayout(32000), seq_len=r["seq_len"],
                                   batch_size=r["batch_size"], lora_r=r["lora_r"],
                                   layers=32 // (r["keep_every"] or 1))["total_GB"]
             for r in train.RECIPES]  # fmt: skip
    assert plans == sorted(plans, reverse=True)
    full = train.training_memory(TokenLayout(32000), lora_r=None, weight_bytes=4)
    assert full["total_GB"] > 80 and train.training_memory(
        TokenLayout(32000), lora_r=None, weight_bytes=4, shards=8)["total_GB"] < 40  # FSDP


def test_a_recipe_too_big_for_the_gpu_is_refused_naming_what_fits(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (15.0e9, 15.8e9))
    plan = train.training_memory(TokenLayout(32000))  # 7B LoRA, 4 x 4092: ~26 GB
    with pytest.raises(train.DoesNotFitError, match="--keep-every 2") as err:
        train.check_memory(plan, "cuda:0")
    assert "15.0 of 15.8 GB free" in str(err.value)
    train.check_memory(plan, "cpu")  # no check off the GPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (79e9, 85e9))
    train.check_memory(plan, "cuda:0")  # fits an 80 GB card


def test_our_calls_raise_no_deprecation_warnings(tiny_models, tok, tokens, tmp_path):
    """Training (LoRA, checkpointing on), loading for chat and cached generation: no
    Deprecation/FutureWarning may be raised on behalf of a call in speechlm_utils. Libraries
    warn from their own frames, so the caller is found on the stack when the warning is shown
    (peft's own use of transformers' deprecated names is peft's)."""
    import traceback
    import warnings

    ours = []

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, (DeprecationWarning, FutureWarning)):
            return
        for frame in reversed(traceback.extract_stack()[:-1]):
            if "/peft/" in frame.filename:
                return
            if "/speechlm_utils/" in frame.filename:
                ours.append(f"{category.__name__}: {message} (from {frame.filename}:"
                            f"{frame.lineno})")  # fmt: skip
                return

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        run = tmp_path / "run"
        trainer = train.Trainer(cfg(lora_r=4, max_steps=1, grad_checkpointing=True), tiny_models,
                                tokens, run)  # fmt: skip
        trainer.fit(progress=False)
        model, tokenizer = train.load_run(run, tiny_models)
        ids = trainer.splits.train[0]["input_ids"][:44].tolist()
        generate(model, tokenizer.layout, ids, 30, Sampling(seed=0))
    assert not ours, "\n".join(ours)


def test_notebook_05_adopts_the_recipe_that_fits_the_gpu(monkeypatch):
    class Props:
        total_memory = 15.8e9  # a T4

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    monkeypatch.setattr(train, "pick_dtype", lambda device: torch.float16)
    full = TrainConfig.from_profile("full")
    t4 = train.recipe_config(full, device="cuda:0")
    assert (t4.lora_r, t4.keep_every, t4.seq_len, t4.batch_size) == (16, 2, 2046, 1)
    assert t4.seq_len * t4.batch_size * t4.grad_accum == pytest.approx(
        full.seq_len * full.batch_size * full.grad_accum, rel=0.01)  # same tokens per step
    duplex = TokenLayout(32000, user_codebooks=2)  # notebook 08: windows of whole 32-token groups
    t4_duplex = train.recipe_config(full.replace(seq_len=4096), device="cuda:0", layout=duplex)
    assert t4_duplex.seq_len == 2016 and t4_duplex.seq_len % duplex.group_len == 0
    Props.total_memory = 85e9  # an 80 GB card keeps the default
    assert train.recipe_config(full, device="cuda:0") == full
    assert train.recipe_config(full, device="cpu") == full


def test_a_schedule_sized_to_the_data():
    full = TrainConfig.from_profile("full", epochs=2.0)  # 4 x 8 windows per step by default
    big = train.schedule_for_data(full, windows=160_000)
    assert big.max_steps == 10_000 and big.grad_accum == 8 and big.warmup_steps == 100
    small = train.schedule_for_data(full, windows=400)  # a Colab's few hours of audio
    assert small.grad_accum == 2 and small.max_steps == 100  # accumulation lowered for steps
    assert small.warmup_steps == 10 and small.save_every == 10 and small.eval_every == 10
    tiny = train.schedule_for_data(full, windows=10)
    assert (tiny.grad_accum, tiny.max_steps, tiny.warmup_steps) == (1, 5, 1)


def test_a_resume_keeps_the_runs_recipe(tiny_models, tokens, tmp_path):
    run = tmp_path / "run"
    train.Trainer(cfg(lora_r=4, max_steps=1, save_every=1), tiny_models, tokens, run).fit(
        progress=False)
    other = cfg(lora_r=8, max_steps=2)
    with pytest.raises(ValueError, match="lora_r=4"):  # not a raw shape error
        train.Trainer(other, tiny_models, tokens, run).fit(resume=True, progress=False)
    kept = train.recipe_config(other, tiny_models, run_dir=run)
    assert kept.lora_r == 4 and kept.seq_len == other.seq_len
    train.Trainer(kept, tiny_models, tokens, run).fit(resume=True, progress=False)
    assert train.read_metrics(run)[-1]["step"] == 2


def test_fsdp_trains_lora_on_a_bf16_base_and_samples_between_evaluations(tokens, tmp_path):
    """The GPU recipe under FSDP on 2 gloo ranks: the frozen base in bf16, LoRA and the new rows
    in fp32 (two dtypes in one sharded unit), each layer upcast as it is sharded; an audio
    sample at step 2, where no evaluation ran (the root's tables are gathered for it)."""
    run = tmp_path / "run"
    torchrun_train(tokens, run, "29522", "--fsdp", "--lora-r", "8", "--dtype", "bf16",
                   "--sample-every", "2", "--eval-every", "3")  # fmt: skip
    metrics = train.read_metrics(run)
    sampled = {m["step"] for m in metrics if "sample_text" in m}
    evaluated = {m["step"] for m in metrics if "val_loss" in m}
    assert sampled == {2, 4} and 2 not in evaluated
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    assert all(m["ranks_in_sync"] for m in metrics if "ranks_in_sync" in m)
    weights = torch.load(run / "final" / "weights.pt")
    assert any("lora_A" in name for name in weights)
    assert {v.dtype for v in weights.values()} == {torch.float32}  # gathered whole, fp32
    model, _ = train.load_run(run, device="cpu")  # and chat can load what it saved
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_fewer_training_windows_than_ranks_is_a_clear_error(tok, tmp_path):
    tokens = make_tokens(tmp_path, tok, videos=2, chunks=1)
    proc = torchrun_train(tokens, tmp_path / "run", "29523", "--seq-len", "2200", ok=False,
                          timeout=180)  # fmt: skip
    assert proc.returncode != 0
    assert "rank(s): every rank needs at least one" in proc.stderr


def test_fsdp_before_torch_2_8_refuses_a_mixed_dtype_model(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.bfloat16), torch.nn.Linear(4, 4))
    model[0].requires_grad_(False)
    monkeypatch.setattr(torch, "__version__", "2.7.1+cu126")
    with pytest.raises(RuntimeError, match="torch>=2.8"):
        train.check_fsdp_dtypes(model)
    monkeypatch.setattr(torch, "__version__", "2.8.0")
    train.check_fsdp_dtypes(model)  # fine from 2.8 on
    monkeypatch.setattr(torch, "__version__", "2.7.1")
    model[0].float()
    train.check_fsdp_dtypes(model)  # one dtype: fine anywhere
    with pytest.raises(ValueError, match="CUDA"):
        train.train_dtype("fp16", "cpu")


def test_kind_loss_shares_sum_to_one_and_follow_the_weights(tiny_models, tok, tokens):
    from speechlm_utils.model import build_speech_lm, core_model, output_weight

    lm = build_speech_lm(tiny_models, tok.layout)
    ids = torch.as_tensor(np.load(next(tokens.glob("*/*.npy"))).astype(np.int64)[:220])[None]
    with torch.no_grad():
        hidden = core_model(lm)(input_ids=ids).last_hidden_state
    head = output_weight(lm)
    equal = train.kind_loss_shares(hidden, head, ids, tok.layout, (1, 1, 1, 1))
    light_pad = train.kind_loss_shares(hidden, head, ids, tok.layout, (1, 0.1, 1, 1))
    assert sum(equal.values()) == pytest.approx(1.0) == sum(light_pad.values())
    assert light_pad["pad"] < equal["pad"] and light_pad["semantic"] > equal["semantic"]
    assert equal["acoustic"] > equal["semantic"]  # 3 acoustic codebooks to 1 semantic


def test_compare_recipes_trains_each_once_and_reads_back(tiny_models, tokens, tmp_path):
    rows = train.compare_recipes(cfg(), tiny_models, tokens, tmp_path / "cmp", steps=3)
    by = {r["recipe"]: r for r in rows}
    full, lora = by["full finetune"], by["LoRA r=8 + new rows"]
    pruned = by["half the layers, full finetune"]
    assert lora["trainable"] < full["trainable"] == full["total"]
    assert pruned["layers"] == full["layers"] // 2 and pruned["total"] < full["total"]
    assert all(len(r["losses"]) == 3 and r["step_s"] > 0 for r in rows)
    again = train.compare_recipes(cfg(), tiny_models, tokens, tmp_path / "cmp", steps=3)
    assert [r["losses"] for r in again] == [r["losses"] for r in rows]  # read back, not retrained


def test_trainable_groups_name_what_lora_trains(tiny_models, tok):
    from speechlm_utils.model import build_speech_lm, count_parameters, trainable_groups

    lora = build_speech_lm(tiny_models, tok.layout, lora_r=4)
    groups = {g["group"]: g for g in trainable_groups(lora)}
    assert {f"LoRA A, B on {p}" for p in ("q_proj", "v_proj", "down_proj")} <= set(groups)
    new_rows = groups["new rows of the output table"]["parameters"]
    assert new_rows == (tok.layout.vocab_size - tok.layout.text_vocab_size) * 128
    assert sum(g["parameters"] for g in groups.values()) == count_parameters(lora)["trainable"]


def test_the_duplex_users_stream_is_its_own_loss_kind_weighted_apart(text_tokenizer):
    tok = SpeechTokenizer(text_tokenizer, user_codebooks=1)
    lay = tok.layout
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(tok.encode(rng.integers(0, 2048, (4, 10)), [],
                                      rng.integers(0, 2048, (1, 10))).ids)[None]  # fmt: skip
    hidden = torch.randn(1, ids.shape[1], 16, generator=torch.Generator().manual_seed(0))
    head = torch.randn(lay.padded_vocab_size, 16, generator=torch.Generator().manual_seed(1))
    classes = train.loss_classes(lay, ids)[0]
    kinds = torch.from_numpy(lay.kinds(ids.shape[1]))
    assert ((classes == 4) == (kinds == 5)).all() and (classes == 4).sum() == 10
    other = ids.clone()
    user = kinds == 5
    other[0, user] = lay.id_range(5)[0] + (other[0, user] - lay.id_range(5)[0] + 7) % 2048
    for weights, changes in (((1, 1, 1, 1), False), ((1, 1, 1, 1, 0.0), False),
                             ((1, 1, 1, 1, 1.0), True)):  # fmt: skip
        a, parts = train.weighted_loss(hidden, head, ids, lay, weights)
        b, _ = train.weighted_loss(hidden, head, other, lay, weights)
        assert (abs(float(a) - float(b)) > 1e-6) == changes  # only a weight makes it predicted
        assert parts[4, 1] == 10  # the user's targets are counted (logged) either way
    shares = train.kind_loss_shares(hidden, head, ids, lay, (1, 1, 1, 1, 1.0))
    assert "user" in shares and abs(sum(shares.values()) - 1) < 1e-6


def test_a_process_leaves_the_group_it_joined(monkeypatch):
    """The trainer's process group is destroyed before exit (gloo can abort a process that
    exits still in one, failing a finished torchrun): joined once, left idempotently."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29531")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    import atexit

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    train.join_process_group()
    train.join_process_group()  # a second trainer in the same process joins nothing new
    assert torch.distributed.is_initialized() and registered == [train.leave_process_group]
    registered[0]()
    assert not torch.distributed.is_initialized()
    train.leave_process_group()  # the CLI's own call after atexit's: nothing left to leave


def test_wandb_online_without_a_key_logs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    mode, why = train.wandb_mode("online")
    assert mode == "offline" and "wandb sync" in why
    assert train.wandb_mode("disabled") == ("disabled", None)
    assert train.wandb_mode("offline") == ("offline", None)
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    assert train.wandb_mode("online") == ("online", None)  # as `wandb login` leaves it
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a private server
    assert train.wandb_mode("online")[0] == "offline"


def test_a_finished_rank_leaves_the_group_and_exits_without_teardown(tmp_path):
    """What the CLI does after a torchrun command: barrier, leave, flush, exit at once (no
    interpreter teardown, where gloo once aborted a finished run); a no-op without a group."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent("""
        import atexit, os
        from speechlm_utils import train
        train.end_distributed_process()  # no group: returns
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
        train.join_process_group()
        atexit.register(print, "teardown ran")
        print("trained and saved")  # buffered: a pipe
        train.end_distributed_process()
        print("after the end")
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "trained and saved\n"  # flushed; nothing after, no teardown
