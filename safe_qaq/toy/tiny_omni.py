"""Build a tiny, randomly initialised Qwen2.5-Omni (thinker only) that ms-swift loads like Qwen2.5-Omni-7B.

Why: the 7B Omni model cannot be downloaded here, yet the recipe must run on the same code path for it as for
Qwen2-Audio. This writes, offline and in seconds, a folder that ``swift sft/rlhf/infer --model DIR --model_type
qwen2_5_omni`` accepts:

* ``Qwen2_5OmniForConditionalGeneration`` with ``enable_audio_output: false`` -- the thinker alone (2-layer audio
  encoder, 1-block vision encoder, 2-layer text model), no talker, no token2wav; seeded;
* a byte-level BPE tokenizer trained on the project's prompts (the same corpus as :mod:`safe_qaq.toy.tiny_model`)
  with the Omni special tokens (``<|AUDIO|>``, ``<|audio_bos|>``, ``<|IMAGE|>``, ``<|VIDEO|>``, ...) and the
  processor's named tokens (``image_token``, ``audio_token``, ...);
* the processor the class requires: a Whisper feature extractor (128 mel bins, 16 kHz, 30 s windows), the
  Qwen2-VL image processor and a video processor (Qwen2-VL's where torchvision loads, else the audio-only one of
  :mod:`safe_qaq.omni_audio`; audio rows never use either, but ``Qwen2_5OmniProcessor`` requires them);
* a generation config that suppresses the chat/audio/vision special ids (a random model would sample them).

Usage::

    python -m safe_qaq.toy.tiny_omni --out models/tiny-qwen2_5-omni
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safe_qaq.toy.tiny_model import VOCAB_SIZE
from safe_qaq.toy.tiny_model import build_tokenizer as _build_tokenizer

# Named as in Qwen2.5-Omni-7B's tokenizer; the processor reads the second column as tokenizer attributes.
NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *NAMED_TOKENS.values())
SUPPRESSED_TOKENS = ("<|im_start|>", *NAMED_TOKENS.values())
HIDDEN = 32
HEAD_DIM = 16  # 2 heads of 16: the three M-RoPE sections (time, height, width) must add up to HEAD_DIM / 2
MARKER = "safe_qaq_tiny.json"
# Qwen2.5-Omni's chat template for text and audio turns (the processor saves it; ms-swift uses its own template).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out_dir: Path):
    """The tiny build's tokenizer (one builder for every tiny build), with Qwen2.5-Omni's special tokens."""
    return _build_tokenizer(out_dir, SPECIAL_TOKENS, NAMED_TOKENS)


def build_tiny_omni(out_dir: str | Path, seed: int = 0, *, force: bool = False) -> Path:
    """Write the tiny Qwen2.5-Omni thinker to ``out_dir`` (skipped when an identical build is already there)."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        WhisperFeatureExtractor,
    )

    from safe_qaq.omni_audio import audio_only_processor, torchvision_loads

    out_dir = Path(out_dir)
    recipe = {"family": "qwen2_5_omni", "seed": seed, "vocab_size": VOCAB_SIZE, "hidden": HIDDEN, "version": 1}
    marker = out_dir / MARKER
    if not force and marker.exists() and json.loads(marker.read_text()) == recipe:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(out_dir)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    image_processor = Qwen2VLImageProcessor()
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
    )
    if torchvision_loads():
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        processor = Qwen2_5OmniProcessor(
            image_processor=image_processor,
            video_processor=Qwen2VLVideoProcessor(),
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
        processor.save_pretrained(out_dir)
    else:  # transformers' only video processor imports torchvision: the parts, loaded by safe_qaq/omni_audio.py
        audio_only_processor(tokenizer, image_processor, feature_extractor, CHAT_TEMPLATE)  # it builds
        # One preprocessor_config.json: the feature extractor's (the image processor's defaults are rebuilt).
        feature_extractor.save_pretrained(out_dir)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(out_dir)

    tokens = {
        "audio_token_index": ids["<|AUDIO|>"],
        "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"],
        "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_end_token_id": ids["<|audio_eos|>"],
        "vision_start_token_id": ids["<|vision_bos|>"],
        "vision_end_token_id": ids["<|vision_eos|>"],
        "user_token_id": tokenizer.convert_tokens_to_ids("user") or 0,
    }
    thinker = {
        "audio_config": {
            "num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
            "d_model": HIDDEN, "max_source_positions": 1500, "n_window": 100, "output_dim": HIDDEN,
        },
        "vision_config": {
            "depth": 1, "hidden_size": HIDDEN, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
            "fullatt_block_indexes": [0], "window_size": 112,
        },
        "text_config": {
            "vocab_size": len(tokenizer), "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32768,
            "rope_theta": 10000.0, "tie_word_embeddings": False,
            "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
        },
        **tokens,
        "pad_token_id": ids["<|endoftext|>"],
        "ignore_index": -100,
    }  # fmt: skip
    # The talker/token2wav configs keep their defaults: with enable_audio_output false they are never built.
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    config.thinker_config.text_config.eos_token_id = ids["<|im_end|>"]
    config.thinker_config.text_config.pad_token_id = ids["<|endoftext|>"]
    torch.manual_seed(seed)
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        suppress_tokens=[ids[tok] for tok in SUPPRESSED_TOKENS],
        do_sample=False,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    # Qwen2_5OmniForConditionalGeneration.from_pretrained requires the talker's speaker table even with the talker
    # off; an empty one (torch's format, which transformers loads with weights_only) means no voices.
    torch.save({}, out_dir / "spk_dict.pt")
    marker.write_text(json.dumps(recipe))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/tiny-qwen2_5-omni", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    args = parser.parse_args(argv)
    print(f"tiny Qwen2.5-Omni thinker written to {build_tiny_omni(args.out, args.seed, force=args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
