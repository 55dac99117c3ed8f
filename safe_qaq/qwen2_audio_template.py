"""ms-swift plugin: the ``qwen2_audio_expanded`` template, which makes Qwen2-Audio generate correctly.

Load it with ``--external_plugins safe_qaq/qwen2_audio_template.py --template qwen2_audio_expanded``
(CLI) or ``import safe_qaq.qwen2_audio_template`` then ``template_type=TEMPLATE_TYPE`` (Python).

Why it exists.  ms-swift 4.6's stock ``qwen2_audio`` template writes one ``<|AUDIO|>`` token
per audio and leaves the expansion to the model's *legacy* path in
``Qwen2AudioForConditionalGeneration.forward``.  ms-swift's GRPO needs trl >= 0.26, hence
transformers >= 4.56, and there that legacy path only expands the embeddings: the attention
mask and cache positions keep the unexpanded prompt length.  Padded batched generation then
crashes (``The size of tensor a (214) must match the size of tensor b (141)``) and batch-size-1
generation silently decodes wrong tokens from the second generated token on.  Writing as many
``<|AUDIO|>`` tokens as the audio encoder yields frames -- what transformers' own
``Qwen2AudioProcessor`` has done since 4.49 -- takes the model's non-legacy path, whose
scores equal a teacher-forced forward over the same tokens.  Training loss is unchanged.

In vLLM mode the template is left as stock: vLLM expands ``<|AUDIO|>`` itself.
"""

from __future__ import annotations

from typing import Any

from swift.template import register_template
from swift.template.constant import MLLMTemplateType
from swift.template.register import TEMPLATE_MAPPING
from swift.template.template_inputs import StdTemplateInputs
from swift.template.templates.qwen import Qwen2AudioTemplate, QwenTemplateMeta
from swift.template.utils import findall

TEMPLATE_TYPE = "qwen2_audio_expanded"
AUDIO_TOKEN = "<|AUDIO|>"


def encoder_frames(mel_frames: int) -> int:
    """Audio-encoder output frames for ``mel_frames`` valid mel frames (conv stride 2, then pool 2).

    The same arithmetic as ``Qwen2AudioEncoder._get_feat_extract_output_lengths``:
    30 s of audio = 3000 mel frames -> 750 ``<|AUDIO|>`` tokens.
    """
    after_conv = (mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


class Qwen2AudioExpandedTemplate(Qwen2AudioTemplate):
    """The stock template plus one ``<|AUDIO|>`` per encoder frame of each audio."""

    def _encode(self, inputs: StdTemplateInputs) -> dict[str, Any]:
        encoded = super()._encode(inputs)
        if not inputs.audios or self.mode in ("vllm", "lmdeploy", "sglang"):
            return encoded
        audio_id = self.processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        positions = findall(encoded["input_ids"], audio_id)
        frames = encoded["feature_attention_mask"].sum(-1).tolist()
        if len(positions) != len(frames):
            raise ValueError(
                f"{len(positions)} {AUDIO_TOKEN} tokens in the prompt but {len(frames)} audios; "
                "check that the text has one <audio> tag per entry of 'audios'"
            )
        input_ids, labels, loss_scale = self._extend_tokens(
            encoded["input_ids"],
            encoded["labels"],
            encoded.get("loss_scale"),
            positions,
            lambda i: [audio_id] * encoder_frames(int(frames[i])),
        )
        encoded["input_ids"], encoded["labels"], encoded["loss_scale"] = input_ids, labels, loss_scale
        return encoded


def _register() -> None:
    # Plugins may be imported twice (CLI plugin + Python import); registering once is enough.
    if TEMPLATE_TYPE in TEMPLATE_MAPPING:
        return
    stock = TEMPLATE_MAPPING[MLLMTemplateType.qwen2_audio]
    register_template(
        QwenTemplateMeta(
            TEMPLATE_TYPE,
            template_cls=Qwen2AudioExpandedTemplate,
            default_system=stock.default_system,
        )
    )


_register()
