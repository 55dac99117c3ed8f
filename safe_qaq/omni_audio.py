"""ms-swift plugin: Qwen2.5-Omni for audio-only rows, where torchvision does not load (the CPU stack).

Load it with ``--external_plugins safe_qaq/omni_audio.py --model_type qwen2_5_omni_audio --template
qwen2_5_omni_audio`` (CLI) or ``import safe_qaq.omni_audio`` (Python). The backbone entry names both
(safe_qaq/backbones.py).

Why it exists.  ms-swift 4.6's stock ``qwen2_5_omni`` model type and template import ``qwen_omni_utils`` --
its loader to patch the vision preprocessing, its template in ``replace_tag`` even for an audio tag -- and
``qwen_omni_utils`` imports ``torchvision`` at import time; transformers 4.57's ``Qwen2_5OmniProcessor`` also
requires a video processor, and its only one (``Qwen2VLVideoProcessor``) imports ``torchvision``. PyPI's
torchvision wheels are CUDA builds: on the CPU torch they do not load (``operator torchvision::nms does not
exist``), and the CPU build lives on an index this project does not use. So here:

* the model type is the stock one (same loader, model class, architecture, talker handling) except that when
  torchvision does not import, its processor is assembled from the model folder's tokenizer, Whisper feature
  extractor and Qwen2-VL image processor, with a video processor that refuses video rows with the reason;
* the template is the stock one except that an audio tag is written without importing ``qwen_omni_utils``
  (images and video still go through the stock code, which needs torchvision).

With torchvision importable (GPU nodes: requirements-gpu.txt) the stock processor is used; the template is the
same either way, so CPU tests and GPU runs encode audio rows identically.
"""

from __future__ import annotations

from typing import Any

from swift.model import Model, ModelGroup, ModelMeta, register_model
from swift.model.constant import MLLMModelType
from swift.model.model_arch import ModelArch
from swift.model.models.qwen import Qwen2_5OmniLoader
from swift.model.register import MODEL_MAPPING
from swift.template import register_template
from swift.template.register import TEMPLATE_MAPPING
from swift.template.template_inputs import StdTemplateInputs
from swift.template.templates.qwen import Qwen2_5OmniTemplate, QwenTemplateMeta
from swift.template.utils import Context
from swift.template.vision_utils import load_audio
from transformers.video_processing_utils import BaseVideoProcessor

MODEL_TYPE = "qwen2_5_omni_audio"
TEMPLATE_TYPE = "qwen2_5_omni_audio"
NO_VIDEO = (
    "this Qwen2.5-Omni processor has no video processor: torchvision does not load here (CPU torch), so only "
    "audio and text rows can be encoded (docs/backbones.md)"
)


def torchvision_loads() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or the CUDA wheel's RuntimeError on a CPU torch
        return False
    return True


class AudioOnlyVideoProcessor(BaseVideoProcessor):
    """Fills Qwen2_5OmniProcessor's required video slot; any video row is refused, with the reason."""

    # Qwen2-VL's values: the processor reads them to size video placeholders, of which audio rows have none.
    merge_size = 2
    temporal_patch_size = 2
    patch_size = 14

    def __call__(self, *args: Any, **kwargs: Any):
        raise ValueError(NO_VIDEO)

    preprocess = __call__


def audio_only_processor(tokenizer, image_processor, feature_extractor, chat_template=None):
    """Qwen2_5OmniProcessor with the audio-only video processor (the class accepts no other without torchvision)."""
    from transformers import Qwen2_5OmniProcessor

    class Qwen2_5OmniAudioProcessor(Qwen2_5OmniProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and isinstance(argument, AudioOnlyVideoProcessor):
                return AudioOnlyVideoProcessor
            return super().check_argument_for_proper_class(argument_name, argument)

    return Qwen2_5OmniAudioProcessor(
        image_processor=image_processor,
        video_processor=AudioOnlyVideoProcessor(),
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=chat_template,
    )


class Qwen2_5OmniAudioLoader(Qwen2_5OmniLoader):
    def get_processor(self, model_dir: str, config):
        if torchvision_loads():
            return super().get_processor(model_dir, config)
        from transformers import AutoTokenizer, Qwen2VLImageProcessor, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return audio_only_processor(
            tokenizer,
            Qwen2VLImageProcessor.from_pretrained(model_dir),
            WhisperFeatureExtractor.from_pretrained(model_dir),
            getattr(tokenizer, "chat_template", None),
        )


class Qwen2_5OmniAudioTemplate(Qwen2_5OmniTemplate):
    """The stock template; an audio tag needs no ``qwen_omni_utils`` (so no torchvision)."""

    def replace_tag(self, media_type: str, index: int, inputs: StdTemplateInputs) -> list[Context]:
        if media_type != "audio":
            return super().replace_tag(media_type, index, inputs)
        if self.mode != "vllm":  # what the stock tag does for audio, minus the vision import
            rate = inputs.chat_template_kwargs.get("sampling_rate") or self.sampling_rate
            inputs.audios[index] = load_audio(inputs.audios[index], rate)
        return ["<|audio_bos|><|AUDIO|><|audio_eos|>"]


def _register() -> None:
    # Plugins may be imported twice (CLI plugin + Python import); registering once is enough.
    if TEMPLATE_TYPE not in TEMPLATE_MAPPING:
        register_template(QwenTemplateMeta(TEMPLATE_TYPE, template_cls=Qwen2_5OmniAudioTemplate))
    if MODEL_TYPE not in MODEL_MAPPING:
        stock = MODEL_MAPPING[MLLMModelType.qwen2_5_omni]
        register_model(
            ModelMeta(
                MODEL_TYPE,
                [ModelGroup([Model(None, None)], TEMPLATE_TYPE)],
                Qwen2_5OmniAudioLoader,
                model_arch=ModelArch.qwen2_5_omni,
                # Only by name (--model_type): stock checkpoints keep resolving to the stock type.
                architectures=[],
                requires=[r for r in stock.requires if r != "decord"],  # decord decodes video only
                tags=["audio"],
                # ms-swift marks only its own MLLM types multimodal; without it freeze_vit is ignored (the audio
                # encoder would train) and rows are pre-encoded in forked workers instead of lazily.
                is_multimodal=True,
                additional_saved_files=list(stock.additional_saved_files),
                ignore_patterns=[],
            )
        )


_register()
