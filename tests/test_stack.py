"""The pinned stack really trains and generates Qwen2-Audio correctly (on the tiny local model)."""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import ROOT

TEMPLATE_PLUGIN = ROOT / "safe_qaq" / "qwen2_audio_template.py"


def test_tiny_model_has_the_shape_ms_swift_expects(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "qwen2_audio"
    assert config["audio_config"]["encoder_layers"] == 2 and config["text_config"]["num_hidden_layers"] == 2
    assert config["ignore_index"] == -100
    extractor = json.loads((tiny_model / "preprocessor_config.json").read_text())
    assert (extractor["feature_size"], extractor["sampling_rate"], extractor["n_samples"]) == (128, 16000, 480000)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "generation_config.json"):
        assert (tiny_model / name).exists()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert tokenizer.tokenize(token) == [token]
    suppressed = json.loads((tiny_model / "generation_config.json").read_text())["suppress_tokens"]
    assert tokenizer.convert_tokens_to_ids("<|AUDIO|>") in suppressed


def test_tiny_model_build_is_seeded(tmp_path):
    from safetensors.torch import load_file

    from safe_qaq.toy.tiny_model import build_tiny_model

    a = load_file(build_tiny_model(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=4) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_expanded_template_writes_one_audio_token_per_encoder_frame(tiny_model, audio_rows):
    from swift.infer_engine import InferRequest
    from swift.model import get_model_processor
    from swift.template import get_template

    from safe_qaq.qwen2_audio_template import TEMPLATE_TYPE, encoder_frames

    assert encoder_frames(3000) == 750  # 30 s of audio
    _, processor = get_model_processor(str(tiny_model), model_type="qwen2_audio", load_model=False)
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    cases = ((TEMPLATE_TYPE, lambda s: encoder_frames(int(s * 100))), ("qwen2_audio", lambda s: 1))
    for template_type, expected in cases:
        template = get_template(processor, template_type=template_type)
        for row, seconds in zip(audio_rows[:2], (2.0, 5.5), strict=True):
            encoded = template.encode(InferRequest(messages=row["messages"], audios=row["audios"]))
            assert encoded["input_ids"].count(audio_id) == expected(seconds)


def _scores_vs_teacher_forcing(model_dir: Path, rows: list[dict], template_type: str) -> float:
    """Largest |logprob from generation - logprob from one teacher-forced forward| over a padded batch."""
    from swift.infer_engine import InferRequest, RequestConfig, TransformersEngine
    from swift.template import get_template

    import safe_qaq.qwen2_audio_template as plugin

    engine = TransformersEngine(str(model_dir), model_type="qwen2_audio", template_type=template_type, max_batch_size=2)
    requests = [InferRequest(messages=row["messages"], audios=row["audios"]) for row in rows]
    config = RequestConfig(max_tokens=8, temperature=0, logprobs=True, return_details=True)
    responses = engine.infer(requests, config, use_tqdm=False)
    # The reference forward uses the expanded encoding: one full forward pass is exact either way.
    reference = get_template(engine.processor, template_type=plugin.TEMPLATE_TYPE)
    worst = 0.0
    for request, response in zip(requests, responses, strict=True):
        if isinstance(response, Exception):
            raise response
        choice = response.choices[0]
        generated = list(choice.token_ids)
        scores = [entry["logprob"] for entry in choice.logprobs["content"]]
        assert len(generated) == len(scores) > 1
        encoded = reference.encode(request)
        ids = encoded["input_ids"] + generated
        with torch.no_grad():
            logits = engine.model(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                input_features=encoded["input_features"],
                feature_attention_mask=encoded["feature_attention_mask"],
            ).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        start = len(encoded["input_ids"]) - 1
        forced = [logprobs[start + j, token].item() for j, token in enumerate(generated)]
        worst = max(worst, max(abs(a - b) for a, b in zip(scores, forced, strict=True)))
    return worst


def test_padded_batch_generation_matches_teacher_forcing(tiny_model, audio_rows):
    from safe_qaq.qwen2_audio_template import TEMPLATE_TYPE

    worst = _scores_vs_teacher_forcing(tiny_model, audio_rows[:2], TEMPLATE_TYPE)
    print(f"largest score difference with {TEMPLATE_TYPE}: {worst:.2e}")
    assert worst < 1e-4


@pytest.mark.xfail(
    strict=True,
    reason="ms-swift 4.6's stock qwen2_audio template emits one <|AUDIO|> per audio; on transformers >= 4.56 "
    "the model's legacy expansion breaks padded generation (size mismatch) and shifts cache positions. "
    "If this passes, upstream fixed it and the expanded template may be retired.",
)
def test_stock_template_padded_batch_matches_teacher_forcing(tiny_model, audio_rows):
    assert _scores_vs_teacher_forcing(tiny_model, audio_rows[:2], "qwen2_audio") < 1e-4
