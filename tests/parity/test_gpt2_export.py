"""Every shipped config's model leaves for HF, or is refused with a message that says why.

Bias-free GPTs (the default demo config gpt-shakespeare-char) export to HF GPT-2 with zero
biases; transformers' GPT2LMHeadModel must give the same logits (<= 1e-5, padded batch).
A config no HF architecture can hold is refused naming the field, its value, what GPT-2 and
Llama need and the nearest shipped config that exports.
"""

import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_helpers import max_diff, padded_batch  # noqa: E402

import attnkit  # noqa: E402 (after the skip)
from attnkit.checkpoints import CheckpointError, read_tensors  # noqa: E402
from attnkit.checkpoints.hf import export_hf  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.models import ModelConfig, build_model  # noqa: E402
from attnkit.text.tokenizers import train_char  # noqa: E402
from attnkit.training import config as run_config  # noqa: E402

TOL = 1e-5
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def shipped(name: str, **overrides) -> ModelConfig:
    """The model config a shipped run config trains (vocab 65, as for tinyshakespeare chars)."""
    data = run_config.read_file(run_config.find_config(name))
    fields = dict(data["model"])
    fields.setdefault("max_seq_len", data["train"]["block_size"])
    fields["vocab_size"] = data["data"].get("vocab_size", 65)
    if fields.get("arch") == "bert":
        fields.setdefault("head", "mlm")
    fields.update(overrides)
    return ModelConfig(**fields)


def perturbed(cfg: ModelConfig):
    """A model of ``cfg`` with non-trivial norms (and biases), so a wrong map cannot pass."""
    torch.manual_seed(0)
    model = build_model(cfg.replace(initializer_range=0.1)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_bias_free_demo_model_exports_to_gpt2_with_zero_biases(tmp_path):
    cfg = shipped("gpt-shakespeare-char")
    assert cfg.bias is False  # what the default demo trains
    ours = perturbed(cfg)
    export_hf(ours, tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["model_type"] == "gpt2" and hf_cfg["architectures"] == ["GPT2LMHeadModel"]
    assert hf_cfg["bias"] is False
    tensors = read_tensors(tmp_path / "model.safetensors")
    biases = [k for k in tensors if k.endswith(".bias")]
    # per layer: ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj; and ln_f
    assert len(biases) == 6 * cfg.n_layer + 1
    assert all(not tensors[k].any() for k in biases)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 0.1
    assert max_diff(ref, got, mask) <= TOL
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        loss = ours(ids, attention_mask=mask, labels=labels).loss.item()
    assert abs(loss - want) <= TOL
    # and back: a bias-free model again, with the same logits
    again = attnkit.load(tmp_path)
    assert again.config.bias is False
    assert again.num_parameters() == ours.num_parameters()
    with torch.no_grad():
        assert max_diff(ref, again(ids, attention_mask=mask).logits, mask) <= TOL


def test_gpt2_directory_saying_bias_false_with_non_zero_biases_is_refused(tmp_path):
    export_hf(perturbed(shipped("gpt-shakespeare-char", n_layer=1)), tmp_path)
    tensors = dict(read_tensors(tmp_path / "model.safetensors"))
    key = "transformer.h.0.mlp.c_fc.bias"
    tensors[key] = tensors[key] + 0.5
    from safetensors.torch import save_file

    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"'transformer\.h\.0\.mlp\.c_fc\.bias' holds non-zero values"
    ):
        attnkit.load(tmp_path)


def test_convert_to_hf_cli_on_the_demo_checkpoint(tmp_path, capsys):
    tok = train_char(TEXT)
    cfg = shipped("gpt-shakespeare-char", vocab_size=tok.get_vocab_size(), n_layer=2)
    ours = perturbed(cfg)
    attnkit.save(ours, tmp_path / "run", tokenizer=tok)
    assert main(["convert", "--to-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "wrote Hugging Face checkpoint" in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf/tokenizer.json"))
    ids = torch.tensor([fast(TEXT[:40])["input_ids"]])
    assert ids.tolist()[0] == tok.encode(TEXT[:40]).ids  # the same tokens on both sides
    with torch.no_grad():
        diff = (hf(input_ids=ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= TOL


@pytest.mark.parametrize(
    "name, model_type",
    [
        ("gpt-shakespeare-char", "gpt2"),
        ("gpt-shakespeare-char-classic", "gpt2"),
        ("gpt-shakespeare-bpe", "gpt2"),
        ("bert-shakespeare", "roformer"),
    ],
)
def test_shipped_configs_that_export(tmp_path, name, model_type):
    cfg = shipped(name, n_layer=1, vocab_size=120)
    export_hf(perturbed(cfg), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type


def test_best_recipe_config_is_refused_naming_fields_and_the_nearest_config(tmp_path):
    cfg = shipped("gpt-shakespeare-char-best", n_layer=1)
    with pytest.raises(ValueError) as exc:
        export_hf(perturbed(cfg), tmp_path)
    msg = str(exc.value)
    assert (
        "config field mlp='relu2' has no HF form; GPT-2 needs one of "
        "['gelu_tanh', 'gelu', 'relu'], Llama needs 'swiglu'" in msg
    )
    assert "config field positional='rope': GPT-2 needs 'learned' (Llama holds it)" in msg
    assert "config field norm='layernorm': Llama needs 'rmsnorm' (GPT-2 holds it)" in msg
    assert "as HF llama set norm='rmsnorm', mlp='swiglu'" in msg
    assert msg.endswith("the shipped config gpt-shakespeare-char exports (as HF gpt2)")
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "overrides, clause",
    [
        (
            dict(positional="alibi"),
            "config field positional='alibi' has no HF form; "
            "GPT-2 needs 'learned', Llama needs 'rope'",
        ),
        (dict(positional="sinusoidal"), "config field positional='sinusoidal' has no HF form"),
        (
            dict(norm_placement="post"),
            "config field norm_placement='post' has no HF form; "
            "GPT-2 needs 'pre', Llama needs 'pre'",
        ),
        (
            dict(attention="linear"),
            "config field attention='linear' has no HF form; "
            "GPT-2 needs 'exact', Llama needs 'exact'",
        ),
        (dict(window=8), "config field window=8 has no HF form; GPT-2 needs None"),
        (dict(final_norm=False), "config field final_norm=False has no HF form"),
        (dict(n_kv_heads=2), "config field n_kv_heads=2: GPT-2 needs 4 (Llama holds it)"),
        (
            dict(mlp="swiglu"),
            "config field mlp='swiglu': GPT-2 needs one of ['gelu_tanh', "
            "'gelu', 'relu'] (Llama holds it)",
        ),
    ],
)
def test_each_refusal_names_the_field_and_what_each_architecture_needs(tmp_path, overrides, clause):
    cfg = shipped("gpt-shakespeare-char", n_layer=1).replace(**overrides)
    with pytest.raises(ValueError, match=r"^this model has no HF form: ") as exc:
        export_hf(build_model(cfg), tmp_path)
    assert clause in str(exc.value)
    assert "the shipped config gpt-shakespeare-char exports (as HF gpt2)" in str(exc.value)


def test_convert_cli_refusal_is_one_line_exit_2(tmp_path, capsys):
    tok = train_char(TEXT)
    cfg = shipped("gpt-shakespeare-char-best", vocab_size=tok.get_vocab_size(), n_layer=1)
    attnkit.save(build_model(cfg), tmp_path / "run", tokenizer=tok)
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--to-hf", str(tmp_path / "run"), str(tmp_path / "hf")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert re.search(r"config field mlp='relu2' has no HF form.*gpt-shakespeare-char exports", err)
    assert not (tmp_path / "hf").exists()
