"""Writing Hugging Face folders atomically, and refusing checkpoints that cannot be exported."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from cotdistill import checkpoints as ckpt
from cotdistill.errors import ConfigError
from cotdistill.export import META_DIR, export_checkpoint, write_hf_folder

WORDS = ["<pad>", "<eos>", "<unk>", "one", "two", "three", "plus", "is"]


def small_model(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval()


def small_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def snapshot(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_written_folder_loads_back_with_equal_weights_and_tokenizer(tmp_path):
    model = small_model(0)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    out = write_hf_folder(model, model.state_dict(), small_tokenizer(), tmp_path / "final")
    assert out == tmp_path / "final"

    loaded = GPT2LMHeadModel.from_pretrained(out)
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)

    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    assert tokenizer("one plus two is three")["input_ids"] == [3, 6, 4, 7, 5]
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"], "temporary or backup folders left behind"


def test_written_weights_come_from_the_given_state_not_the_module(tmp_path):
    model = small_model(0)
    state = {k: v.clone() for k, v in small_model(1).state_dict().items()}
    wanted = state["transformer.h.0.mlp.c_fc.weight"]  # save_pretrained may consume the dict it is given
    out = write_hf_folder(model, state, small_tokenizer(), tmp_path / "final")
    loaded = GPT2LMHeadModel.from_pretrained(out)
    torch.testing.assert_close(loaded.transformer.h[0].mlp.c_fc.weight, wanted)
    assert not torch.equal(loaded.transformer.h[0].mlp.c_fc.weight, model.transformer.h[0].mlp.c_fc.weight)


def test_existing_export_is_replaced_by_a_new_complete_one(tmp_path):
    out = tmp_path / "final"
    old_model, new_model = small_model(0), small_model(1)
    write_hf_folder(old_model, old_model.state_dict(), small_tokenizer(), out)
    (out / "stale.txt").write_text("from the old export", encoding="utf-8")

    write_hf_folder(new_model, new_model.state_dict(), small_tokenizer(), out)

    assert not (out / "stale.txt").exists()
    loaded = GPT2LMHeadModel.from_pretrained(out)
    torch.testing.assert_close(loaded.lm_head.weight, new_model.lm_head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_failed_export_leaves_the_previous_folder_untouched(tmp_path, monkeypatch):
    out = tmp_path / "final"
    model = small_model(0)
    write_hf_folder(model, model.state_dict(), small_tokenizer(), out)
    before = snapshot(out)

    broken = small_tokenizer()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(broken, "save_pretrained", fail)
    other = small_model(1)
    with pytest.raises(OSError, match="disk full"):
        write_hf_folder(other, other.state_dict(), broken, out)

    assert snapshot(out) == before, "the old export changed although the new one failed"
    assert not (tmp_path / "final.old").exists()
    # Whatever half-written folder remains is not under the final name, and the next export succeeds.
    write_hf_folder(other, other.state_dict(), small_tokenizer(), out)
    torch.testing.assert_close(GPT2LMHeadModel.from_pretrained(out).lm_head.weight, other.lm_head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_export_of_a_folder_without_marker_names_it(tmp_path):
    folder = ckpt.checkpoint_path(tmp_path / "run", 40)
    folder.mkdir(parents=True)
    (tmp_path / "run" / META_DIR).mkdir()
    with pytest.raises(ConfigError, match=ckpt.MARKER) as err:
        export_checkpoint(folder, tmp_path / "out")
    assert str(folder) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_export_of_a_complete_checkpoint_without_run_meta_names_the_missing_folder(tmp_path):
    folder = ckpt.checkpoint_path(tmp_path / "run", 40)
    folder.mkdir(parents=True)
    ckpt.mark_complete(folder, {"step": 40})
    with pytest.raises(ConfigError, match="missing") as err:
        export_checkpoint(folder, tmp_path / "out")
    assert str(tmp_path / "run" / META_DIR) in str(err.value)
    assert not (tmp_path / "out").exists()


def flan_t5_like(seed: int):
    """A T5 v1.1 (FlanT5) model: gated-GELU, no output scaling, an LM head of its own."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(64, 16))  # as trained: the head differs from `shared`
    return model


def test_flan_t5_skeleton_keeps_its_own_lm_head():
    from cotdistill.modeling import build_from_config

    config = flan_t5_like(0).config
    skeleton = build_from_config(config, "seq2seq")
    assert skeleton.lm_head.weight is not skeleton.shared.weight
    assert skeleton.encoder.embed_tokens.weight is skeleton.shared.weight  # the input embeddings stay shared
    plain_t5 = build_from_config(type(config)(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                              num_heads=2), "seq2seq")
    assert plain_t5.lm_head.weight is plain_t5.shared.weight  # original T5 ties its head, as published


def test_offline_export_of_a_flan_t5_checkpoint_keeps_embedding_and_head_apart(tmp_path, monkeypatch):
    trained = flan_t5_like(1)
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    assert not torch.equal(state["shared.weight"], state["lm_head.weight"])
    folder = ckpt.checkpoint_path(tmp_path / "run", 10)
    folder.mkdir(parents=True)
    ckpt.mark_complete(folder, {"step": 10})
    trained.config.save_pretrained(tmp_path / "run" / META_DIR)
    small_tokenizer().save_pretrained(tmp_path / "run" / META_DIR)
    monkeypatch.setattr("cotdistill.export.state_dict_from_checkpoint", lambda *args: dict(state))

    out = export_checkpoint(folder, tmp_path / "out", dtype="fp32")

    from transformers import T5ForConditionalGeneration

    loaded = T5ForConditionalGeneration.from_pretrained(out)
    torch.testing.assert_close(loaded.shared.weight, state["shared.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.lm_head.weight, state["lm_head.weight"], rtol=0, atol=0)
