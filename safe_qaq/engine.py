"""One way to generate from a model, whatever serves it: ms-swift's infer engines behind a small interface.

Backends:

* ``pt``     -- ms-swift ``TransformersEngine`` (CPU or GPU, LoRA adapters applied on load);
* ``vllm``   -- ms-swift ``VllmEngine`` (GPU; adapters served through vLLM's LoRA support);
* ``openai`` -- an OpenAI-compatible endpoint (``swift deploy``, ``vllm serve``) via ms-swift's
  ``InferClient``; ``model`` is then the served model name (or None for the first one).

Rows are dicts with ``messages`` (ms-swift chat; the last turn is the user's) and ``audios``.
The local backends use the ``qwen2_audio_expanded`` template (see
:mod:`safe_qaq.qwen2_audio_template` for why the stock one generates wrongly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prompt import question_of

BACKENDS = ("pt", "vllm", "openai")


@dataclass
class Engine:
    """``generate(rows, ...)`` returns, per row, ``n`` completion texts."""

    backend: str
    engine: Any
    model: str | None = None
    adapter_request: Any = None
    _request_kwargs: dict[str, Any] = field(default_factory=dict)

    def generate(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = -1,
        max_tokens: int = 512,
        seed: int | None = None,
        use_tqdm: bool = False,
    ) -> list[list[str]]:
        from swift.infer_engine import InferRequest, RequestConfig

        requests = [
            InferRequest(messages=question_of(row["messages"]), audios=list(row.get("audios") or [])) for row in rows
        ]
        config = RequestConfig(
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
        )
        if seed is not None and self.backend == "pt":
            # ms-swift's transformers engine ignores RequestConfig.seed; seed torch's sampler instead.
            from transformers import set_seed

            set_seed(seed)
        kwargs = dict(self._request_kwargs)
        if self.adapter_request is not None:
            kwargs["adapter_request"] = self.adapter_request
        if self.backend == "openai":
            kwargs["model"] = self.model
        responses = self.engine.infer(requests, config, use_tqdm=use_tqdm, **kwargs)
        outputs = []
        for row, response in zip(rows, responses, strict=True):
            if isinstance(response, Exception):  # ms-swift returns (not raises) per-request failures
                raise RuntimeError(f"generation failed for row {row.get('call_id', '?')}: {response}") from response
            outputs.append([choice.message.content or "" for choice in response.choices])
        return outputs


def make_engine(
    model: str | None,
    *,
    adapters: Sequence[str] | None = None,
    backend: str = "pt",
    base_url: str | None = None,
    api_key: str = "EMPTY",
    max_batch_size: int = 8,
    model_type: str = "qwen2_audio",
    **engine_kwargs: Any,
) -> Engine:
    """Build an :class:`Engine`.  ``engine_kwargs`` go to the ms-swift engine's constructor."""
    import safe_qaq.qwen2_audio_template as template  # registers the template

    adapters = list(adapters or [])
    if backend == "pt":
        from swift.infer_engine import TransformersEngine

        engine = TransformersEngine(
            model,
            adapters=adapters,
            model_type=model_type,
            template_type=template.TEMPLATE_TYPE,
            max_batch_size=max_batch_size,
            **engine_kwargs,
        )
        return Engine(backend, engine, model)
    if backend == "vllm":
        from swift.infer_engine import AdapterRequest, VllmEngine

        lora = {"enable_lora": True, "max_lora_rank": engine_kwargs.pop("max_lora_rank", 64)} if adapters else {}
        if len(adapters) > 1:
            raise ValueError("the vllm backend serves one LoRA adapter; merge the others with `swift export`")
        engine = VllmEngine(
            model,
            model_type=model_type,
            template_type=template.TEMPLATE_TYPE,
            limit_mm_per_prompt=engine_kwargs.pop("limit_mm_per_prompt", {"audio": 8}),
            **lora,
            **engine_kwargs,
        )
        request = AdapterRequest("lora", adapters[0]) if adapters else None
        return Engine(backend, engine, model, adapter_request=request)
    if backend == "openai":
        from swift.infer_engine import InferClient

        if adapters:
            raise ValueError("the openai backend uses whatever the server serves; pass --adapters to the server")
        client = InferClient(base_url=base_url or "http://127.0.0.1:8000/v1", api_key=api_key)
        return Engine(backend, client, model or client.models[0])
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
