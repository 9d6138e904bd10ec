"""A model other than GPT-NeoX: a tiny OLMo-2 (Olmo2ForCausalLM, head size 64) on both engines,
with the end-of-text ids its generation config adds, and its own dtype chosen on a GPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, Olmo2Config

from tests.models import EOS_SEQUENCE, MEMORIZED, VOCAB, make_tokens, train_to_memorize
from vmem import hardware
from vmem.engines import EngineConfig, build_engine, choose_dtype, load_model_config
from vmem.evaluate import Evaluation, evaluate
from vmem.io import mmidx
from vmem.runs.merge import merge_run

EXTRA_EOS = 7  # only the generation config lists it
EXTRA_EOS_AT = 32 + 10  # planted in sequence EXTRA_EOS_SEQUENCE's continuation
EXTRA_EOS_SEQUENCE = 5


def olmo2_config() -> Olmo2Config:
    return Olmo2Config(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, intermediate_size=256,
                       max_position_embeddings=128, eos_token_id=0, pad_token_id=1,
                       bos_token_id=None, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory):
    """The model (trained on the first MEMORIZED sequences) and a dataset of its sequences."""
    folder = tmp_path_factory.mktemp("olmo2")
    tokens = make_tokens(seed=3)
    tokens[tokens == EXTRA_EOS] = EXTRA_EOS + 1  # EXTRA_EOS only where planted
    tokens[EXTRA_EOS_SEQUENCE, EXTRA_EOS_AT] = EXTRA_EOS
    train_to_memorize(tokens[:MEMORIZED], folder / "model", config=olmo2_config())
    GenerationConfig(eos_token_id=[0, EXTRA_EOS], pad_token_id=1).save_pretrained(
        folder / "model")
    mmidx.write_merged(str(folder / "data"), tokens)
    return str(folder / "model"), str(folder / "data"), tokens


def reference_generation(model_dir: str, tokens: np.ndarray) -> np.ndarray:
    """The paper's method, written plainly: HF generate, fp32, min_length masks end-of-text."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = torch.from_numpy(tokens[:, :32].astype(np.int64))
    with torch.inference_mode():  # every token attended to, the pad id's too
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_length=64,
                             min_length=64, do_sample=False, pad_token_id=1,
                             eos_token_id=[0, EXTRA_EOS])
    return out[:, 32:].numpy()


def scored(tmp, engine, engine_name, model, data, name, stop, **kw):
    evaluate(Evaluation(engine=EngineConfig(model, engine=engine_name, dtype="float32"),
                        data=data, out=str(tmp / name), start=0, stop=stop, chunk_size=64,
                        progress=False, **kw), engine=engine)
    merge_run(str(tmp / name), str(tmp / f"{name}.parquet"))
    return pd.read_parquet(tmp / f"{name}.parquet")


def test_end_of_text_ids_include_the_generation_configs(olmo2):
    model, _, _ = olmo2
    assert load_model_config(model, None).eos_token_id == [0, EXTRA_EOS]


def test_olmo2_is_evaluated_alike_by_vllm_and_transformers_both_methods(tmp_path, olmo2):
    model, data, tokens = olmo2
    stop = 128
    expected = reference_generation(model, tokens[:stop])
    for engine_name in ("hf", "vllm"):
        engine = build_engine(EngineConfig(model, engine=engine_name, dtype="float32"))
        try:
            generated = engine.generate(tokens[:stop, :32].astype(np.int64), 32, False)
            np.testing.assert_array_equal(generated, expected)
            gen = scored(tmp_path, engine, engine_name, model, data, f"g-{engine_name}", stop)
            ver = scored(tmp_path, engine, engine_name, model, data, f"v-{engine_name}", stop,
                         method="verify")
        finally:
            engine.close()
        equal = expected == tokens[:stop, 32:64]
        np.testing.assert_array_equal(gen["matches"], equal.sum(axis=1))
        np.testing.assert_array_equal(ver["memorized"], equal.all(axis=1))
        np.testing.assert_array_equal(ver["prefix_match"], gen["prefix_match"])
        memorized = set(ver.loc[ver["memorized"], "index"])
        # Trained on, so memorized, except where an end-of-text id (the config's, or the one
        # only the generation config lists), masked in the paper's method, is in the truth.
        assert memorized == set(range(MEMORIZED)) - {EOS_SEQUENCE, EXTRA_EOS_SEQUENCE}
        assert ver.loc[EXTRA_EOS_SEQUENCE, "prefix_match"] == EXTRA_EOS_AT - 32


def test_a_gpu_runs_a_bfloat16_model_in_bfloat16_and_pythia_in_float16(tmp_path, monkeypatch,
                                                                         olmo2):
    monkeypatch.setattr(hardware, "on_gpu", lambda: True)
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_config(olmo2_config()).to(torch.bfloat16).save_pretrained(bf16)
    assert choose_dtype("auto", EngineConfig(str(bf16))).value == "bfloat16"
    model, _, _ = olmo2  # saved in float32: the paper's float16
    assert choose_dtype("auto", EngineConfig(model)).value == "float16"
    assert choose_dtype("float32", EngineConfig(str(bf16))).value == "float32"
