"""The distributed launch and serving, run for real on CPU with the tiny model (slow).

The chain (tests/helpers/chain.py, a session fixture shared with test_learning): stage-1 GRPO as a two-"node" run
on localhost (NNODES=2, one process each). Then stage 1's merged model is served with `swift deploy` and asked
through the OpenAI-compatible backend. (Sampling in shards: tests/test_pipeline.py, on the demo chain.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from safe_qaq.jsonl import read_jsonl
from tests.helpers.chain import Chain, launch_env
from tests.helpers.cli import ROOT, dry_run_commands, load_gpu_report
from tests.helpers.recipe_support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.recipe]


@pytest.fixture(scope="module")
def chain(lora_chain) -> Chain:
    return lora_chain


def adapter_keys(run: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(run / "last-checkpoint" / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def test_grpo_trains_on_two_nodes_and_node_0_alone_merges(chain, warm_model):
    node0, node1 = chain.logs["stage1_node0"], chain.logs["stage1_node1"]
    for log, rank in ((node0, 0), (node1, 1)):
        assert f"--nnodes 2 --node_rank {rank} --master_addr 127.0.0.1" in log
        assert "world_size: 2, local_world_size: 1" in log
    steps = [entry for entry in read_jsonl(chain.out / "stage1_grpo" / "logging.jsonl") if "loss" in entry]
    assert len(steps) == 1
    assert node0.count(">>> merge:") == 1 and node0.count("swift/cli/export.py") == 1
    assert "swift/cli/export.py" not in node1 and "node 1: training done; node 0 merges" in node1
    merged = chain.out / "stage1_grpo" / "merged"
    assert (merged / "model.safetensors").exists() and not (merged.parent / "merged.partial").exists()
    assert json.loads((chain.out / "stage1_grpo" / "args.json").read_text())["model"] == str(warm_model)
    keys = adapter_keys(chain.out / "stage1_grpo")
    assert keys and all(".language_model." in key for key in keys)
    assert not any("audio_tower" in key or "multi_modal_projector" in key for key in keys)


def completions_per_step(run: Path) -> Counter:
    """Every completion ms-swift generated (its completions log gathers all ranks), once per step."""
    seen: dict[str, list[str]] = {}
    for table in read_jsonl(run / "completions.jsonl"):
        seen.setdefault(table["step"][0], table["completion"])  # ms-swift appends a step's table again at the end
    return Counter(text for texts in seen.values() for text in texts)


def test_rewards_are_logged_once_per_completion(chain):
    generated = completions_per_step(chain.out / "stage1_grpo")
    assert sum(generated.values()) == 4  # 2 ranks x per-device batch 2, one step
    # Rank 0 logs into SAFE_QAQ_REWARD_LOG, rank 1 into rewards.rank1.jsonl beside it.
    files = sorted(path.name for path in chain.root.glob("rewards*.jsonl"))
    assert files == ["rewards.jsonl", "rewards.rank1.jsonl"]
    logged = [record for name in files for record in read_jsonl(chain.root / name)]
    rewards = {record["reward"] for record in logged}
    assert rewards == {"adaptive_classification", "prompt_format", "think_length_reward_300"}
    for reward in rewards:
        texts = Counter(record["completion"] for record in logged if record["reward"] == reward)
        assert texts == generated, reward  # each completion exactly once: none lost, none per rank twice


# --- serving ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(chain, tmp_path_factory):
    """`bash scripts/serve.sh` (swift deploy) on stage 1's merged model; stopped by its pid (its process group)."""
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = launch_env(root, chain.out / "stage1_grpo" / "merged", Path("."), SERVE_PORT=str(port))
    log = open(root / "serve.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve.sh"), str(chain.out / "stage1_grpo" / "merged")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # `swift deploy` runs the server as a child; the group stops both
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            assert process.poll() is None, (root / "serve.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    served = json.loads(response.read())
                break
            except OSError:
                assert time.time() < deadline, "swift deploy did not answer within 300 s"
                time.sleep(1)
        assert [m["id"] for m in served["data"]] == ["safe-qaq"]
        yield {"base_url": base_url, "root": root, "env": env}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def run_python(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@contextlib.contextmanager
def one_thread():
    """The server's thread count (launch_env's OMP_NUM_THREADS=1) for in-process generation, so greedy decoding
    sums in the same order on both sides."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_served_model_answers_like_the_local_engine(chain, server, prepared):
    """evaluate.sh's command and `live eval` through --backend openai give the greedy answers of --backend pt. Each
    side runs in this process (a process start-up costs more than its answers): the command evaluate.sh prints for
    that environment under DRY_RUN=1, and `live eval`'s entry point."""
    from safe_qaq import evaluate, live, recipe

    root, env = server["root"], server["env"]
    merged = str(chain.out / "stage1_grpo" / "merged")
    rows = root / "rows.jsonl"
    rows.write_text("".join((prepared / "offline_test.jsonl").read_text(encoding="utf-8").splitlines(True)[:3]))
    flags = ["--no-floor", "--no-plots", "--quiet"]
    outs = {backend: root / f"eval_{backend}" for backend in ("pt", "openai")}
    extra = {"EVAL_DATA": str(rows), "EVAL_BASE_URL": server["base_url"]}
    for backend, model in (("pt", merged), ("openai", "safe-qaq")):
        side = {**env, **extra, "EVAL_MODEL": model, "EVAL_OUT": str(outs[backend]), "EVAL_BACKEND": backend}
        argv = recipe.eval_argv(recipe.load(env["PROFILE"], side))
        # What evaluate.sh runs for this environment (its dry run prints it), run here in this process.
        dry = subprocess.run(["bash", str(ROOT / "evaluate.sh"), *flags], env={**side, "DRY_RUN": "1"},
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        (printed,) = dry_run_commands(dry.stdout)
        assert printed[1:] == [*argv, *flags] and argv[:2] == ["-m", "safe_qaq.evaluate"]
        with one_thread():
            assert evaluate.main([*argv[2:], *flags]) == 0
    predictions = {b: [r["prediction"] for r in read_jsonl(out / "predictions.jsonl")] for b, out in outs.items()}
    assert len(predictions["pt"]) == 3 and predictions["openai"] == predictions["pt"]

    answers = {}
    for backend, model in (("pt", merged), ("openai", "safe-qaq")):
        out = root / f"live_{backend}"
        args = ["eval", "--model", model, "--backend", backend, "--calls", str(prepared / "calls_test.jsonl"),
                "--out", str(out), "--limit", "1", "--max-rounds", "2", "--max-tokens", "16",
                "--cache-dir", str(root / "live_cache"), "--quiet"]  # fmt: skip
        if backend == "openai":
            args += ["--base-url", server["base_url"]]
        with one_thread():
            assert live.main(args) == 0
        (record,) = read_jsonl(out / "live_results.jsonl")
        answers[backend] = [(s["text"], s.get("history")) for s in record["steps"]]
    assert answers["pt"] and answers["openai"] == answers["pt"]


@pytest.fixture(scope="module")
def missing_audio(server, prepared):
    """`safe_qaq.evaluate --backend openai` on a row whose audio file does not exist."""
    root, env = server["root"], server["env"]
    row = read_jsonl(prepared / "offline_test.jsonl")[0]
    missing = str(root / "no-such-call.flac")
    row["audios"] = [missing]
    bad = root / "missing_audio.jsonl"
    bad.write_text(json.dumps(row, ensure_ascii=False) + "\n")
    started = time.time()
    result = run_python(
        ["-m", "safe_qaq.evaluate", "--backend", "openai", "--base-url", server["base_url"], "--model", "safe-qaq",
         "--data", str(bad), "--out", str(root / "eval_missing"), "--max-tokens", "8", "--no-floor", "--quiet"],
        env,
        timeout=120,
    )  # fmt: skip
    return {"missing": missing, "bad": bad, "result": result, "seconds": time.time() - started}


def test_a_missing_audio_file_fails_the_request_instead_of_hanging(missing_audio):
    assert missing_audio["seconds"] < 120 and missing_audio["result"].returncode != 0


def test_a_missing_audio_file_error_names_the_file_in_one_line(missing_audio):
    """Checked before anything is sent: ms-swift's client would send the path as text, and the server's
    error ("Invalid file: None") names nothing."""
    stderr = missing_audio["result"].stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert line == f"error: {missing_audio['bad']}:1: audio {missing_audio['missing']} does not exist", stderr


def test_gpu_report_reads_what_real_stages_leave(chain):
    """scripts/gpu_report.py on the chain's real ms-swift logs (the part of gpu_check.sh a CPU can run): the
    rollout rate counts the completions of both ranks."""
    gpu_report = load_gpu_report()
    check = chain.out / "gpu_check"
    check.mkdir(exist_ok=True)
    timings = {"1-grpo": chain.seconds["stage1"], "2b-rsft": 1.0}
    lines = [json.dumps({"stage": stage, "ms": seconds * 1000}) for stage, seconds in timings.items()]
    (check / "timings.jsonl").write_text("\n".join(lines) + "\n")
    (check / "1-grpo.memory.csv").write_text("0, 512\n1, 3072\n0, 1024\n")
    assert gpu_report.main([str(chain.out)]) == 0
    rows = {row["stage"]: row for row in json.loads((check / "report.json").read_text())}
    (step,) = [e for e in read_jsonl(chain.out / "stage1_grpo" / "logging.jsonl") if "loss" in e]
    grpo = rows["1-grpo"]
    assert grpo["steps"] == 1 and grpo["s_per_step"] == pytest.approx(step["step_time"])
    assert grpo["rollout_tokens_per_s"] == pytest.approx(step["completions/mean_length"] * 4 / step["step_time"])
    assert grpo["peak_gpu_gib"] == 3.0 and rows["2b-rsft"]["peak_gpu_gib"] is None
    # A stage whose run folder is missing reads as no steps, not as an error (SFT's numbers: tests/test_pipeline.py).
    assert rows["2b-rsft"]["steps"] == 0 and "s_per_step" not in rows["2b-rsft"]
    assert "| 1-grpo |" in (check / "report.md").read_text()
