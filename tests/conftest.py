"""Shared fixtures: the tiny local Qwen2-Audio and a few generated audio rows."""

import os
from pathlib import Path

import pytest

from tests.helpers.cli import BUNDLED_CALLS, write_tone

# Keep CPU runs lean and offline: no hub access, one thread per op on this shared machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from safe_qaq.toy.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2-audio")


@pytest.fixture(scope="session")
def warm_model() -> Path:
    """The committed warm base (data/warm_base, `make model`): the CPU profiles' starting point. Read-only: a
    test that trains from it writes elsewhere. Fails, naming the fix, when the shipped copy is out of date."""
    from safe_qaq.toy import warm_start

    problem = warm_start.check()
    assert problem is None, problem
    return warm_start.SHIPPED


@pytest.fixture(scope="session")
def lora_chain(tmp_path_factory, warm_model, prepared, request):
    """The distributed LoRA chain (tests/helpers/chain.py), trained once: test_distributed checks the launch,
    test_learning the merge (a merged model answers like base + adapter)."""
    from tests.helpers.chain import build_chain

    if wanted(request, "demo_chain"):
        request.getfixturevalue("demo_chain")  # never beside the background demo (`demo_in_background`)
    return build_chain(tmp_path_factory.mktemp("launch"), warm_model, prepared)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The bundled calls through the real data pipeline (train/test split and all), once per session."""
    from safe_qaq import prepare

    out = tmp_path_factory.mktemp("prepared")
    assert prepare.main(["--input", str(BUNDLED_CALLS), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def audio_rows(tmp_path_factory) -> list[dict]:
    """Four fraud-task prompt rows over tones of different lengths (so a batch needs padding)."""
    import prompt

    folder = tmp_path_factory.mktemp("audio")
    rows = []
    tones = [(2.0, prompt.FRAUD), (5.5, prompt.NORMAL), (3.0, prompt.NORMAL), (4.0, prompt.FRAUD)]
    for i, (seconds, gold) in enumerate(tones):
        audio = write_tone(folder / f"tone{i}.wav", seconds, 220 + 90 * i, seed=i)
        rows.append(
            {
                "messages": prompt.build_messages("fraud"),
                "audios": [str(audio)],
                "answers": gold,
                "conversation_stage": prompt.COMPLETE,
                "task": "fraud",
                "call_id": f"tone{i}",
            }
        )
    return rows


@pytest.fixture(scope="session")
def paper_recipe(tmp_path_factory, tiny_model, prepared, request):
    """`make check-recipe`'s scenarios and what ms-swift parsed of every command, Qwen2-Audio and the Omni
    backbones in one set of launches (tests/helpers/paper_recipe.py): test_recipe and test_recipe_omni."""
    from tests.helpers.paper_recipe import build_recipe

    if wanted(request, "demo_chain"):
        request.getfixturevalue("demo_chain")  # never beside the background demo (`demo_in_background`)
    return build_recipe(tmp_path_factory.mktemp("recipe"), tiny_model, prepared)


def wanted(request, fixture: str) -> bool:
    """Whether any test this session runs uses ``fixture``."""
    return any(fixture in item.fixturenames for item in request.session.items)


GLOO = ("lora_chain", "paper_recipe")  # several processes over gloo: never beside the background demo


def pytest_collection_modifyitems(items):
    """The fast tests first (in file order), then those that train or generate (`slow`), then those that launch
    several processes over gloo: quick feedback, and the demo chain trains in the background while the first two
    groups run (`demo_in_background`)."""

    def group(item) -> int:
        if any(name in item.fixturenames for name in GLOO):
            return 2
        return 1 if any(item.get_closest_marker(m) for m in ("slow", "recipe", "long")) else 0

    items.sort(key=group)


@pytest.fixture(scope="session")
def demo_job(tmp_path_factory, warm_model):
    """scripts/demo.sh started in the background (tests/helpers/chain.py); `demo_chain` waits for it."""
    from tests.helpers.chain import DemoJob

    job = DemoJob(tmp_path_factory.mktemp("demo"), warm_model)
    yield job
    job.stop()  # the session ended before a test waited for it


@pytest.fixture(scope="session", autouse=True)
def demo_in_background(request):
    """When the session runs the demo chain's tests, the demo starts with the session: the fast tests run in this
    process (one core), the demo's stages take the other. The trainings that launch several processes over gloo
    (`lora_chain`, `paper_recipe`) wait for it: under load a gloo rank once aborted at exit."""
    if wanted(request, "demo_chain"):
        request.getfixturevalue("demo_job")


@pytest.fixture(scope="session")
def demo_chain(demo_job):
    """`make demo`'s chain, one step a stage, two sampler shards: test_pipeline checks the chain, the shards and
    `gpu_report.py` on its logs."""
    return demo_job.wait()
