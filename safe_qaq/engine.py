"""One way to generate from a model, whatever serves it: ms-swift's infer engines behind a small interface.

Backends:

* ``pt``     -- ms-swift ``TransformersEngine`` (CPU or GPU, LoRA adapters applied on load);
* ``vllm``   -- ms-swift ``VllmEngine`` (GPU; adapters served through vLLM's LoRA support);
* ``openai`` -- an OpenAI-compatible endpoint (``swift deploy``, ``vllm serve``) via ms-swift's
  ``InferClient``; ``model`` is then the served model name (or None for the first one).

The model argument is resolved by :func:`safe_qaq.models.resolve_model` (a local folder, or the
served name): a folder that does not exist is one line naming it, never a hub download.

Rows are dicts with ``messages`` (ms-swift chat; the last turn is the user's) and ``audios``.
The local backends use the ``qwen2_audio_expanded`` template (see
:mod:`safe_qaq.qwen2_audio_template` for why the stock one generates wrongly).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prompt import AUDIO_TAG, question_of
from safe_qaq.models import model_fingerprint, resolve_model

BACKENDS = ("pt", "vllm", "openai")
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


@dataclass(frozen=True)
class Sampling:
    """Every setting that shapes a generation, always passed explicitly.

    Explicit because an engine otherwise falls back to the model's ``generation_config.json``
    (Qwen2-Audio-7B-Instruct ships ``repetition_penalty: 1.1``), so sampling, evaluation and
    GRPO rollouts (which use 1.0) would silently differ.  ``temperature 0`` is greedy.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`Engine.generate`."""
        return asdict(self)

    def problem(self) -> str | None:
        """Why these settings cannot be used, or None (checked before a model is loaded)."""
        if not self.temperature >= 0:
            return f"--temperature must be >= 0, got {self.temperature}"
        if not 0 < self.top_p <= 1:
            return f"--top-p must be in (0, 1], got {self.top_p}"
        if self.top_k == 0 or self.top_k < -1:
            return f"--top-k must be -1 (off) or >= 1, got {self.top_k}"
        if not self.repetition_penalty > 0:
            return f"--repetition-penalty must be > 0, got {self.repetition_penalty}"
        if self.max_tokens < 1:
            return f"--max-tokens must be >= 1, got {self.max_tokens}"
        return None


GREEDY = Sampling()


def add_engine_arguments(
    parser: argparse.ArgumentParser, *, defaults: Sampling = GREEDY, model_required: bool = True
) -> None:
    """The model/engine and generation options every generating CLI shares (one definition)."""
    engine = parser.add_argument_group("model and engine")
    engine.add_argument(
        "--model", required=model_required, help="local model folder (the served model name with --backend openai)"
    )
    engine.add_argument("--adapters", nargs="*", default=[], help="LoRA adapter checkpoint(s) applied on load")
    engine.add_argument("--backend", choices=BACKENDS, default="pt")
    engine.add_argument("--base-url", help="OpenAI-compatible endpoint for --backend openai (swift deploy, vllm)")
    gen = parser.add_argument_group("generation (explicit; the model's generation_config is not consulted)")
    gen.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=defaults.top_p)
    gen.add_argument("--top-k", type=int, default=defaults.top_k, help="-1 = off")
    gen.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    gen.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="longest completion")
    gen.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed (none: unseeded)")


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The :class:`Sampling` of parsed :func:`add_engine_arguments` options (checked)."""
    sampling = Sampling(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    problem = sampling.problem()
    if problem:
        raise ValueError(problem)
    return sampling


def engine_from_args(args: argparse.Namespace, *, max_batch_size: int = 8) -> Engine:
    return make_engine(
        args.model, adapters=args.adapters, backend=args.backend, base_url=args.base_url, max_batch_size=max_batch_size
    )


def _weights(model: str | None) -> list[list[Any]] | None:
    """``[name, size, mtime_ns]`` of a local folder's weight files (None for a served name): a retrained model
    is another model.  The form resume metadata has always stored, so older outputs still resume."""
    fingerprint = model_fingerprint(model)
    return None if fingerprint is None else fingerprint["weights"]


def _where(model: str | None) -> str | None:
    """A local path made absolute (so ``./m`` and ``/abs/m`` are one model); a served name as given."""
    return str(Path(model).resolve()) if model and Path(model).exists() else model


def engine_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What generates: backend, model and adapters with their weight fingerprints, the endpoint.

    Part of every resumable output's settings, so a run never mixes two models' answers.
    """
    adapters = list(args.adapters or [])
    return {
        "backend": args.backend,
        "model": _where(args.model),
        "model_weights": _weights(args.model),
        "adapters": [{"path": _where(a), "weights": _weights(a)} for a in adapters],
        "base_url": (args.base_url or DEFAULT_BASE_URL) if args.backend == "openai" else None,
    }


def request_problem(row: Any) -> str | None:
    """Why a row cannot be sent to :meth:`Engine.generate`, or None.

    ``messages`` must be a list of ``{role, content}`` strings ending (before any assistant
    answer) in a user turn, with one ``<audio>`` tag per entry of ``audios`` (a list of strings),
    and every audio that is not a URL must exist here, whatever the backend: the ``openai``
    backend's client (ms-swift's ``InferClient``) reads local files and sends their bytes, and
    sends a path it cannot open as text, which the server then fails on without naming it.
    Checked before a model is loaded, so a bad row costs a message, not a failed run.
    """
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        return "'messages' is missing or not a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not all(isinstance(message.get(k), str) for k in ("role", "content")):
            return f"'messages'[{i}] is not an object with string 'role' and 'content'"
    question = question_of(messages)
    if not question or question[-1]["role"] != "user":
        return "'messages' has no user turn to answer"
    audios = row.get("audios")
    if audios is None:
        audios = []
    if not isinstance(audios, list) or not all(isinstance(a, str) and a for a in audios):
        return "'audios' is not a list of paths"
    tags = sum(m["content"].count(AUDIO_TAG) for m in question)
    if tags != len(audios):
        return f"{tags} {AUDIO_TAG} tag(s) in 'messages' for {len(audios)} audio(s)"
    missing = [a for a in audios if "://" not in a and not a.startswith("data:") and not _is_file(a)]
    if len(missing) == 1:
        return f"audio {missing[0]} does not exist"
    if missing:
        return f"{len(missing)} audios do not exist: {', '.join(missing)}"
    return None


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a name too long, or with a NUL: no such file either
        return False


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
        repetition_penalty: float = 1.0,
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
            repetition_penalty=repetition_penalty,
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
    model_type: str | None = None,
    **engine_kwargs: Any,
) -> Engine:
    """Build an :class:`Engine`.  ``engine_kwargs`` go to the ms-swift engine's constructor.

    The model and adapters are resolved first (:func:`safe_qaq.models.resolve_model`): a missing folder raises
    :class:`safe_qaq.models.ModelError` before ms-swift is imported. The model type and template are the
    backbone's (safe_qaq.backbones: MODEL_FAMILY, or the model's config.json).
    """
    import importlib
    import os

    from safe_qaq import backbones

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    model = resolve_model(model, backend=backend)
    adapters = [resolve_model(a, backend=backend, what="adapter") for a in adapters or []]
    backbone = (
        backbones.resolve(os.environ.get("MODEL_FAMILY") or None, model)
        if model and backend != "openai"
        else backbones.get(backbones.DEFAULT_FAMILY)
    )
    if backbone.template_plugin:  # registers the family's template (and model type)
        importlib.import_module(backbone.template_plugin.removesuffix(".py").replace("/", "."))
    for key, value in backbone.env.items():  # what --model_kwargs sets in the stage commands
        os.environ.setdefault(key, value)
    model_type = model_type or backbone.model_type
    template_type = backbone.template

    if backend == "pt":
        from swift.infer_engine import TransformersEngine

        engine = TransformersEngine(
            model,
            adapters=adapters,
            model_type=model_type,
            template_type=template_type,
            max_batch_size=max_batch_size,
            **engine_kwargs,
        )
        return Engine(backend, engine, model)
    if backend == "vllm":
        from swift.infer_engine import AdapterRequest, VllmEngine

        from safe_qaq.audio import MAX_AUDIOS_PER_ROW

        lora = {"enable_lora": True, "max_lora_rank": engine_kwargs.pop("max_lora_rank", 64)} if adapters else {}
        if len(adapters) > 1:
            raise ValueError("the vllm backend serves one LoRA adapter; merge the others with `swift export`")
        engine = VllmEngine(
            model,
            model_type=model_type,
            template_type=template_type,
            limit_mm_per_prompt=engine_kwargs.pop(
                "limit_mm_per_prompt", {"audio": min(MAX_AUDIOS_PER_ROW, backbone.vllm_audio_limit)}
            ),
            **lora,
            **engine_kwargs,
        )
        request = AdapterRequest("lora", adapters[0]) if adapters else None
        return Engine(backend, engine, model, adapter_request=request)
    if backend == "openai":
        from swift.infer_engine import InferClient

        if adapters:
            raise ValueError("the openai backend uses whatever the server serves; pass --adapters to the server")
        client = InferClient(base_url=base_url or DEFAULT_BASE_URL, api_key=api_key)
        return Engine(backend, client, model or client.models[0])
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
