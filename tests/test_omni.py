"""Qwen2.5-Omni on the pinned stack, on the tiny local thinker: generation exactness, budget counts, the 30 s cut,
and the smoke chain of every stage script with MODEL_FAMILY=qwen2_5_omni."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import prompt
from safe_qaq import backbones
from tests.helpers.cli import write_tone

OMNI = backbones.get("qwen2_5_omni")


@pytest.fixture(scope="session")
def tiny_omni(tmp_path_factory) -> Path:
    from safe_qaq.toy.tiny_omni import build_tiny_omni

    return build_tiny_omni(tmp_path_factory.mktemp("tiny_omni") / "tiny-qwen2_5-omni")


@pytest.fixture(scope="module")
def omni_engine(tiny_omni):
    from safe_qaq.engine import make_engine

    return make_engine(str(tiny_omni), max_batch_size=2)


def test_tiny_omni_is_a_thinker_without_talker(tiny_omni, omni_engine):
    config = json.loads((tiny_omni / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni" and config["enable_audio_output"] is False
    assert backbones.infer(tiny_omni) is OMNI
    model = omni_engine.engine.model
    assert not hasattr(model, "talker") and not hasattr(model, "token2wav")
    tokenizer = omni_engine.engine.processor.tokenizer
    for token in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.tokenize(token) == [token]
    assert (
        tokenizer.convert_tokens_to_ids("<|AUDIO|>")
        in json.loads((tiny_omni / "generation_config.json").read_text())["suppress_tokens"]
    )


def _rows(folder: Path, seconds: list[float]) -> list[dict]:
    return [
        {"messages": prompt.build_messages("fraud"), "audios": [str(write_tone(folder / f"t{i}.wav", s, 200 + 70 * i))]}
        for i, s in enumerate(seconds)
    ]


def test_omni_padded_batch_generation_matches_teacher_forcing(omni_engine, tmp_path):
    """Scores of generated tokens equal one teacher-forced forward over the same tokens (padded batch of 2)."""
    from swift.infer_engine import InferRequest, RequestConfig
    from swift.template import get_template

    engine = omni_engine.engine
    reference = get_template(engine.processor, template_type=OMNI.template)
    rows = _rows(tmp_path, [2.0, 5.5])
    requests = [InferRequest(messages=row["messages"], audios=row["audios"]) for row in rows]
    config = RequestConfig(max_tokens=8, temperature=0, logprobs=True, return_details=True)
    responses = engine.infer(requests, config, use_tqdm=False)
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
    print(f"largest score difference with {OMNI.template}: {worst:.2e}")
    assert worst < 1e-4


@pytest.mark.xfail(
    strict=True,
    reason="ms-swift 4.6's stock qwen2_5_omni template imports qwen_omni_utils for an audio tag, which imports "
    "torchvision; PyPI's torchvision wheels are CUDA builds that do not load on the CPU torch. If this passes, "
    "torchvision loads here and the stock template can be used (safe_qaq/omni_audio.py).",
)
def test_stock_omni_template_encodes_audio_here(omni_engine, tmp_path):
    from swift.infer_engine import InferRequest
    from swift.template import get_template

    (row,) = _rows(tmp_path, [2.0])
    template = get_template(omni_engine.engine.processor, template_type="qwen2_5_omni")
    template.encode(InferRequest(messages=row["messages"], audios=row["audios"]))


def test_omni_budget_counts_equal_the_real_encoding_and_show_the_30_s_cut(tiny_omni, tmp_path):
    """10 s, 30 s and 45 s: the budget's count equals the template's real encoding (audio decoded and featurised).
    45 s as one <audio> is cut to 30 s by Qwen2.5-Omni's feature extractor (ms-swift #9113, fixed for omni_v3
    only): the backbone says so, and prepare chunks calls at 30 s so no chunk is ever over it."""
    from safe_qaq import audio, budget

    counter = budget.Counter.load(str(tiny_omni))
    assert counter.backbone is OMNI
    audio_id = counter.template.processor.tokenizer.convert_tokens_to_ids(OMNI.audio_token)
    for seconds, row in zip((10, 30, 45), _rows(tmp_path, [10, 30, 45]), strict=True):
        encoded = counter.template.encode({"messages": row["messages"], "audios": row["audios"]})
        assert counter.tokens(row) == len(encoded["input_ids"]), seconds
        kept = encoded["input_ids"].count(audio_id)
        assert kept == OMNI.tokens_per_second * min(seconds, 30) == budget.audio_tokens(row["audios"][0], OMNI)
        assert OMNI.cuts(seconds) == (seconds > 30)
    assert OMNI.max_audio_seconds >= audio.MAX_AUDIO_SECONDS  # prepare's chunks fit the extractor: nothing is cut


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.long  # ~9 min on 2 cores (every stage starts its own ms-swift process): `make test-long`
def test_smoke_chain_runs_every_stage_on_the_tiny_omni(tiny_omni, tmp_path):
    """`make demo`'s chain with MODEL_FAMILY=qwen2_5_omni on the tiny thinker: GRPO, sampling, filter, RSFT, LCRL,
    stage 3, evaluation and live calls, one step each and the smallest groups (cost: minutes on 2 loaded cores)."""
    from safe_qaq.jsonl import read_jsonl
    from tests.helpers.cli import ROOT, run_cli

    out = tmp_path / "outputs"
    env = {
        "MODEL_FAMILY": "qwen2_5_omni", "PROFILE": "smoke", "MODEL": str(tiny_omni), "OUTPUT_ROOT": str(out),
        "DATA_DIR": str(tmp_path / "prepared"), "MAX_STEPS": "1", "SAMPLE_LIMIT": "1", "SAMPLE_N": "2",
        "NUM_GENERATIONS": "2", "GRPO_BATCH": "2", "GRAD_ACC": "1", "RSFT_BATCH": "2", "RSFT_GRAD_ACC": "1",
        "MAX_COMPLETION_LENGTH": "24", "EVAL_LIMIT": "2", "LIVE_LIMIT": "1",
        "WARMUP_RATIO": "0",  # one step: with warm-up its learning rate would be 0
    }  # fmt: skip
    result = run_cli(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=tmp_path, timeout=1500, env=env)
    print(result.stdout)
    for step in ("1-grpo", "2a-sample", "2b-rsft", "2c-lcrl", "3-realtime", "4-evaluate", "4-live-calls"):
        assert re.search(rf"^{step}\S*\s+ok", result.stdout, re.M), step
    parent = tiny_omni
    for stage in ("stage1_grpo", "stage2_rsft", "stage2_lcrl", "stage3_realtime"):
        args = json.loads((out / stage / "args.json").read_text())
        assert args["model"] == str(parent) and args["model_type"] == OMNI.model_type, stage
        before, after = _weights(parent), _weights(out / stage / "merged")
        moved = [n for n in before if not torch.equal(before[n], after[n])]
        assert not any(n.startswith(OMNI.encoder_prefixes) for n in moved), stage  # frozen encoders stay
        if stage == "stage2_rsft":
            assert any(n.startswith("thinker.model.") for n in moved)
        parent = out / stage / "merged"
    for stage in ("stage1_grpo", "stage2_lcrl", "stage3_realtime"):  # ms-swift #6069: no empty rollouts
        logged = [e for e in read_jsonl(out / stage / "logging.jsonl") if "completions/mean_length" in e]
        assert logged and all(e["completions/mean_length"] > 0 for e in logged), stage
    assert (out / "eval" / "metrics.md").exists() and (out / "live").is_dir()
