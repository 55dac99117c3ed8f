"""Paths and small helpers the tests share: the repository root, writing a JSONL file, running a CLI."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_CALLS = ROOT / "data" / "calls" / "metadata.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def cli_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (the environment) plus ``extra``, with the venv's tools first on PATH and this checkout importable."""
    base = os.environ if base is None else base
    env = dict(base, **(extra or {}), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def dry_run_commands(stdout: str) -> list[list[str]]:
    """The commands a script printed under ``DRY_RUN=1`` (its comment lines are progress messages)."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def run_cli(
    args: list[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH (plus ``env``); fail with its output on error."""
    env = cli_env(env)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        command = " ".join(map(str, args))
        raise AssertionError(f"{command} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def write_tone(path: Path, seconds: float, freq: float, seed: int = 0) -> Path:
    """A noisy sine tone as a 16 kHz WAV (a stand-in for call audio where words do not matter)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    sf.write(path, wave.astype(np.float32), 16000)
    return path


def load_gpu_report():
    """scripts/gpu_report.py as a module (a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "scripts" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
