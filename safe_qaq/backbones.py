"""The backbones the recipe runs on: one entry per model family, and nothing outside this file names a family.

An entry says what ms-swift needs to train and serve the family (model type, template and the plugin file that
registers it), how audio becomes tokens (per second, and the longest audio one ``<audio>`` carries before the
feature extractor would cut it), where LoRA goes (the language model only), the vLLM audio limit, the
generation-config values the recipe overrides, and the environment ms-swift reads for the family.

The family is ``MODEL_FAMILY`` or, when that is unset, the one whose ``config.json`` ``model_type`` the model has
(:func:`infer`); a family that disagrees with the model's config is refused in one line (:func:`resolve`).

    python -m safe_qaq.backbones                 # one line per family
    python -m safe_qaq.backbones MODEL_DIR       # the family of a local model
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: The bound data preparation, the budget and every vLLM engine share (safe_qaq.audio.MAX_AUDIOS_PER_ROW).
AUDIOS_PER_ROW = 8
SAMPLE_RATE = 16000
HOP_LENGTH = 160  # mel frame = 10 ms in every family's Whisper feature extractor
DEFAULT_FAMILY = "qwen2_audio"


class BackboneError(ValueError):
    """A family that is unknown or does not match the model (one line, naming both)."""


def whisper_frames(mel_frames: int) -> int:
    """Audio-encoder tokens of Qwen2-Audio and Qwen2.5-Omni for ``mel_frames`` valid mel frames (conv stride 2,
    then pool 2): 30 s = 3000 frames -> 750 tokens, 25 a second."""
    after_conv = (mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def qwen3_omni_frames(mel_frames: int) -> int:
    """Qwen3-Omni's audio encoder: 13 tokens per full 100-frame (1 s) window, and the remainder's own three
    stride-2 convolutions (ms-swift's omni_v3 arithmetic, transformers' ``_get_feat_extract_output_lengths``)."""
    rest = mel_frames % 100
    after = (rest - 1) // 2 + 1
    return ((after - 1) // 2 + 1 - 1) // 2 + 1 + (mel_frames // 100) * 13


@dataclass(frozen=True)
class Backbone:
    family: str  # MODEL_FAMILY
    title: str
    hf_model_types: tuple[str, ...]  # config.json "model_type" values of this family
    model_type: str  # ms-swift --model_type
    template: str  # ms-swift --template (the project's fixed one where the stock one generates wrongly)
    template_plugin: str | None  # the file registering that template (--external_plugins), from the repo root
    audio_token: str  # the placeholder the template repeats once per encoder frame
    tokens_per_second: int  # encoder tokens of one second of audio (what the budget and `live` plan with)
    #: The longest audio one <audio> may carry: the feature extractor cuts the rest silently (None: never cut).
    max_audio_seconds: float | None
    #: Where the language model's modules are; LoRA goes there and nowhere else (no encoder, no talker).
    language_model_prefix: str
    encoder_prefixes: tuple[str, ...]  # modules LoRA must never touch (audio encoder, vision encoder, projector)
    positions_path: tuple[str, ...]  # where config.json holds the language model's positions
    vllm_audio_limit: int = AUDIOS_PER_ROW
    vllm_version: str = "0.23.0"  # requirements-gpu.txt; the one that serves this family
    #: Values of the model's generation_config.json that the recipe passes explicitly (rollouts, sampling, eval).
    generation_overrides: dict[str, float] = field(default_factory=dict)
    #: Environment ms-swift reads when it loads the family (the talker of an Omni model stays unloaded).
    env: dict[str, str] = field(default_factory=dict)
    trims_to_hop: bool = False  # the template trims each waveform to a multiple of the hop before extraction
    #: The template mode whose encoding of a row's text decodes no audio (the budget counts text that way).
    text_count_mode: str = "train"

    def lora_target_regex(self, modules: list[str] | tuple[str, ...]) -> str:
        """The peft regex for ``modules`` (e.g. q_proj v_proj) of the language model only, anchored at its name."""
        return rf"^{self.language_model_prefix.replace('.', chr(92) + '.')}.*\.({'|'.join(modules)})$"

    def mel_frames(self, samples: int) -> int:
        """Valid mel frames of ``samples`` samples at 16 kHz as the feature extractor marks them, after any cut."""
        if self.trims_to_hop:
            samples -= samples % HOP_LENGTH
        frames = math.ceil(samples / HOP_LENGTH)
        if self.max_audio_seconds is not None:
            frames = min(frames, int(self.max_audio_seconds * SAMPLE_RATE / HOP_LENGTH))
        return frames

    def encoder_tokens(self, mel_frames: int) -> int:
        """Audio tokens the template writes for ``mel_frames`` valid mel frames."""
        return qwen3_omni_frames(mel_frames) if self.family == "qwen3_omni" else whisper_frames(mel_frames)

    def audio_tokens(self, samples: int) -> int:
        """Audio tokens of one audio of ``samples`` samples at 16 kHz."""
        return self.encoder_tokens(self.mel_frames(samples))

    def cuts(self, seconds: float) -> bool:
        """Whether one <audio> of ``seconds`` would lose its end (more than one mel frame) in the feature extractor."""
        return self.max_audio_seconds is not None and seconds > self.max_audio_seconds + HOP_LENGTH / SAMPLE_RATE

    def positions(self, config: dict) -> int | None:
        node = config
        for key in self.positions_path:
            node = (node or {}).get(key) if isinstance(node, dict) else None
        return int(node) if node else None


QWEN2_AUDIO = Backbone(
    family="qwen2_audio",
    title="Qwen2-Audio-7B-Instruct",
    hf_model_types=("qwen2_audio",),
    model_type="qwen2_audio",
    # ms-swift's stock qwen2_audio writes one <|AUDIO|> per audio and generates wrongly (safe_qaq/qwen2_audio_template).
    template="qwen2_audio_expanded",
    template_plugin="safe_qaq/qwen2_audio_template.py",
    audio_token="<|AUDIO|>",
    tokens_per_second=25,
    max_audio_seconds=30.0,  # WhisperFeatureExtractor, 3000 mel frames
    language_model_prefix="language_model.",
    encoder_prefixes=("audio_tower.", "multi_modal_projector."),
    positions_path=("text_config", "max_position_embeddings"),
    # Qwen2-Audio-7B-Instruct's generation_config.json says 1.1; the recipe's REPETITION_PENALTY is explicit.
    generation_overrides={"repetition_penalty": 1.0},
)
QWEN2_5_OMNI = Backbone(
    family="qwen2_5_omni",
    title="Qwen2.5-Omni-7B (thinker)",
    hf_model_types=("qwen2_5_omni",),
    # ms-swift's qwen2_5_omni with an audio path that needs no torchvision (safe_qaq/omni_audio.py): the stock
    # one imports qwen_omni_utils, hence torchvision, which does not load on the CPU torch.
    model_type="qwen2_5_omni_audio",
    template="qwen2_5_omni_audio",
    template_plugin="safe_qaq/omni_audio.py",
    audio_token="<|AUDIO|>",
    tokens_per_second=25,
    # ms-swift 4.6 keeps WhisperFeatureExtractor's truncation for omni_v2_5 (fixed for omni_v3 only, PR #9182).
    max_audio_seconds=30.0,
    language_model_prefix="thinker.model.",
    encoder_prefixes=("thinker.audio_tower.", "thinker.visual.", "talker.", "token2wav."),
    positions_path=("thinker_config", "text_config", "max_position_embeddings"),
    generation_overrides={"repetition_penalty": 1.0},  # UNVERIFIED: the published generation_config.json
    env={"ENABLE_AUDIO_OUTPUT": "0"},  # the talker and token2wav are not built: text answers only
    text_count_mode="vllm",  # the Omni templates load each audio while writing its tag in the other modes
)
QWEN3_OMNI = Backbone(
    family="qwen3_omni",
    title="Qwen3-Omni-30B-A3B-Instruct (MoE thinker)",
    hf_model_types=("qwen3_omni_moe",),
    model_type="qwen3_omni_moe",  # ms-swift 4.x; 3.x called it qwen3_omni
    template="qwen3_omni",
    template_plugin=None,
    audio_token="<|audio_pad|>",
    tokens_per_second=13,
    max_audio_seconds=None,  # ms-swift 4.6's omni_v3 turns the extractor's truncation off (#9113 / PR #9182)
    language_model_prefix="thinker.model.",
    encoder_prefixes=("thinker.audio_tower.", "thinker.visual.", "talker.", "code2wav."),
    positions_path=("thinker_config", "text_config", "max_position_embeddings"),
    generation_overrides={"repetition_penalty": 1.0},  # UNVERIFIED: the published generation_config.json
    env={"ENABLE_AUDIO_OUTPUT": "0"},
    trims_to_hop=True,  # omni_v3 trims each waveform to a hop multiple (ms-swift _trim_omni_v3_audios)
    text_count_mode="vllm",
)
BACKBONES: dict[str, Backbone] = {b.family: b for b in (QWEN2_AUDIO, QWEN2_5_OMNI, QWEN3_OMNI)}


def get(family: str) -> Backbone:
    try:
        return BACKBONES[family]
    except KeyError:
        raise BackboneError(
            f"MODEL_FAMILY={family!r} is not a backbone: expected one of {', '.join(BACKBONES)}"
        ) from None


def read_config(model: str | Path) -> dict | None:
    """A local model's config.json, or None when ``model`` has none (not there yet, or a hub id)."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BackboneError(f"{path}: not JSON ({error})") from None


def of_config(config: dict, where: str = "config.json") -> Backbone:
    model_type = config.get("model_type")
    for backbone in BACKBONES.values():
        if model_type in backbone.hf_model_types:
            return backbone
    known = ", ".join(t for b in BACKBONES.values() for t in b.hf_model_types)
    raise BackboneError(f"{where}: model_type {model_type!r} is not a supported backbone ({known})")


def infer(model: str | Path) -> Backbone | None:
    """The family of a local model from its config.json, or None when it has no config.json."""
    config = read_config(model)
    return None if config is None else of_config(config, str(Path(model) / "config.json"))


def resolve(family: str | None, model: str | Path) -> Backbone:
    """``family`` (MODEL_FAMILY) checked against the model's config.json, or inferred from it; the default
    family when neither says."""
    found = infer(model)
    if family:
        chosen = get(family)
        if found is not None and found is not chosen:
            raise BackboneError(
                f"MODEL_FAMILY={family} but {model}/config.json is a {found.family} model "
                f"(model_type {found.hf_model_types[0]}); set MODEL_FAMILY={found.family} or unset it"
            )
        return chosen
    return found or get(DEFAULT_FAMILY)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv:
            print(resolve(None, argv[0]).family)
            return 0
    except BackboneError as error:
        print(f"backbones: {error}", file=sys.stderr)
        return 2
    for b in BACKBONES.values():
        cut = f"{b.max_audio_seconds:g} s" if b.max_audio_seconds else "never cut"
        print(f"{b.family:14} {b.model_type:16} {b.template:22} {b.tokens_per_second} tok/s  <audio> {cut}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
