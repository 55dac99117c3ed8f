"""docs/method.md stays true: its examples run, and every link into it from the code lands on a heading."""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

from safe_qaq import rewards

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
# What the suite scans for references: the shipped code, scripts, tests and docs.
SKIP_DIRS = {
    ".venv",
    ".git",
    "outputs",
    "models",
    "warm_base",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}
TEXT_SUFFIXES = {".py", ".sh", ".md", ".toml", ".txt", ".cfg", ".yaml", ".yml"}
LINK = re.compile(r"docs/method\.md#([\w-]+)")
FENCE = re.compile(r"^\s*(```|~~~)")


def repo_text_files() -> list[Path]:
    files = []
    for root, dirs, names in os.walk(REPO):  # skipped folders are pruned, not walked (.venv is huge)
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        files += [Path(root, n) for n in names if Path(n).suffix in TEXT_SUFFIXES or n in {"Makefile", "run"}]
    return files


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        match = None if in_code else re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")  # GitHub numbers repeated headings
    return anchors


def test_github_slug():
    assert github_slug("Real-time stages") == "real-time-stages"
    assert github_slug("think_length_penalty_200, _300 and _500") == "think_length_penalty_200-_300-and-_500"
    assert github_slug("The method, as this project implements it") == "the-method-as-this-project-implements-it"
    assert heading_anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def links_into_method() -> list[tuple[str, str]]:
    """(file, anchor) of each link ``docs/method.md#…`` outside the doc, and of each ``(#…)`` inside it."""
    found = []
    for path in repo_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [(str(path.relative_to(REPO)), anchor) for anchor in LINK.findall(text)]
    found += [("docs/method.md", anchor) for anchor in re.findall(r"\]\(#([\w-]+)\)", METHOD.read_text("utf-8"))]
    return found


def test_every_link_into_method_md_lands_on_a_heading():
    anchors = heading_anchors(METHOD.read_text(encoding="utf-8"))
    links = links_into_method()
    files = {f for f, _ in links}
    # the code cites the doc from these places; if they stop, this test must notice rather than pass empty
    assert {"prompt.py", "safe_qaq/answer.py", "safe_qaq/metrics.py", "safe_qaq/live.py"} <= files
    broken = [(f, a) for f, a in links if a not in anchors]
    assert not broken, f"links to missing headings of docs/method.md: {broken}"


def test_the_private_spec_is_cited_nowhere():
    spec = re.compile(r"\bSP" + r"EC\b|\u00a7")  # written so that this file does not match itself
    hits = []
    for path in repo_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if spec.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "cite docs/method.md instead:\n" + "\n".join(hits)


def test_readme_links_method_md():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/method.md" in readme


# ---------------------------------------------------------------------------
# The doc's examples are doctests: the worked reward examples are what rewards.py computes
# ---------------------------------------------------------------------------


def run_doc_examples(text: str) -> doctest.TestResults:
    test = doctest.DocTestParser().get_doctest(text, {}, str(METHOD), str(METHOD), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, out=lambda _: None)
    return runner.summarize(verbose=False)


@pytest.fixture
def no_reward_log(monkeypatch):
    monkeypatch.setattr(rewards, "_LOG", rewards.RewardLog(None))


def test_method_md_examples_match_the_code(no_reward_log):
    text = METHOD.read_text(encoding="utf-8")
    test = doctest.DocTestParser().get_doctest(text, {}, str(METHOD), str(METHOD), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert result.attempted >= 40


def test_every_registered_reward_has_a_worked_example():
    examples = doctest.DocTestParser().get_examples(METHOD.read_text(encoding="utf-8"))
    scored = {m for e in examples for m in re.findall(r'score\("(\w+)"', e.source)}
    assert set(rewards.REWARDS) <= scored, f"no worked example for {set(rewards.REWARDS) - scored}"


def test_a_wrong_worked_example_fails(no_reward_log):
    # the check can fail: change one number of the doc and the examples no longer pass
    text = METHOD.read_text(encoding="utf-8")
    assert "\n-1.736\n" in text
    assert run_doc_examples(text.replace("\n-1.736\n", "\n-1.7\n", 1)).failed == 1


# ---------------------------------------------------------------------------
# The README is an entry point: every command in it is run somewhere, every link lands
# ---------------------------------------------------------------------------

README = REPO / "README.md"
#: Each README command and the test (or CI) that runs it. A command added to the README without a line here fails.
README_COMMANDS = {
    "make demo": "tests/test_pipeline.py::test_demo_chain_runs_every_stage",  # scripts/demo.sh, reduced
    "make test": ".ci/run",
    "python -m safe_qaq.prepare --input": "tests/test_prepare.py::test_teleantifraud_fixture",
    "export MODEL=": None,  # an assignment, not a command
    "bash scripts/gpu_check.sh": "tests/test_recipe.py::test_gpu_check_runs_the_recipe_for_two_steps_on_the_gpus_it_finds",  # noqa: E501
    "bash run_swift_grpo_stage1.sh": "tests/test_recipe.py::test_every_command_is_accepted_by_ms_swift",
    "bash sample.sh": "tests/test_recipe.py::test_every_command_is_accepted_by_ms_swift",
    "bash process_samples.sh": "tests/test_recipe.py::test_every_command_is_accepted_by_ms_swift",
    "bash run_swift_sft_stage2_RSFT.sh": "tests/test_recipe.py::test_every_command_is_accepted_by_ms_swift",
    "bash run_swift_grpo_stage2_LCRL.sh": "tests/test_recipe.py::test_every_command_is_accepted_by_ms_swift",
    "bash run_swift_grpo_stage3.sh": "tests/test_recipe.py::test_every_command_is_accepted_by_ms_swift",
    "bash evaluate.sh": "tests/test_recipe.py::test_every_command_is_accepted_by_ms_swift",
    "python -m safe_qaq.recipe show": "tests/test_docs.py::test_the_readme_recipe_commands_run",
    "DRY_RUN=1 bash": "tests/test_docs.py::test_the_readme_recipe_commands_run",
    "GRPO_LR=1e-5 DEEPSPEED= bash": "tests/test_docs.py::test_the_readme_recipe_commands_run",
}


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's bash blocks (continuations joined, comments dropped)."""
    commands, in_bash, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if pending + line:
            commands.append(pending + line)
        pending = ""
    return commands


def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10
    for command in commands:
        where = [w for prefix, w in README_COMMANDS.items() if command.startswith(prefix)]
        assert where, f"README command not run by any test (add it to README_COMMANDS): {command}"
        if where[0] and "::" in where[0]:
            path, name = where[0].split("::")
            assert f"def {name}(" in (REPO / path).read_text(encoding="utf-8"), where[0]
        elif where[0]:
            assert "make test" in (REPO / where[0]).read_text(encoding="utf-8")


def test_the_readme_recipe_commands_run(tmp_path):
    """The settings block of the README, run as written (the stage script under DRY_RUN: no GPU here)."""
    import subprocess
    import sys

    commands = readme_commands(README.read_text(encoding="utf-8"))
    block = [c for c in commands if "recipe show" in c or c.startswith(("DRY_RUN", "GRPO_LR"))]
    assert len(block) == 3
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "NPROC_PER_NODE", "GRPO_LR", "DEEPSPEED")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", OUTPUT_ROOT=str(tmp_path))
    for command in block:
        run = command if command.startswith("DRY_RUN") or "recipe show" in command else f"DRY_RUN=1 {command}"
        result = subprocess.run(["bash", "-c", run], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
        if "GRPO_LR" in command:
            assert "--learning_rate 1e-05" in result.stdout and "--deepspeed" not in result.stdout
        if "recipe show" in command:
            assert "GRPO_LR" in result.stdout and "(paper)" in result.stdout
    assert not any(tmp_path.iterdir())  # dry runs write nothing


def test_every_relative_link_in_the_readme_and_docs_lands():
    broken = []
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[\w-]+)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_the_readme_stays_an_entry_point():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    # no figure that goes stale: test counts and suite timings live nowhere in it
    assert not re.search(r"\b\d+ (tests|passed)\b|\bmin(utes)? on 2 cores\b", text)
