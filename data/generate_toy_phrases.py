"""Synthesise the toy phrase bank (espeak-ng) from which ``safe_qaq.toy.data`` assembles toy calls.

Why: the 24 bundled calls are too few to learn anything but memorisation, and a few hundred
calls of FLAC would not belong in the repository.  A toy *world* does: a fixed bank of short
Chinese phrases -- greetings, one set of phrases per scene, one per fraud type, replies and
goodbyes -- each synthesised once here and committed (0.9 MB of Ogg Vorbis).  The toy calls are
then assembled from them at build time, seeded, with no TTS needed.  The words alone are not
something the 0.2 M-parameter toy model learns to hear in minutes, so ``safe_qaq.toy.data`` adds
an audible cue per label when it assembles a call: the toy verifies the training machinery, it is
not a fraud detector.

The phrase texts are in ``safe_qaq/toy/data.py`` (``PHRASES``), the single place that says what
each label's calls contain.  Rerun this only after editing them:

    apt-get install espeak-ng
    python data/generate_toy_phrases.py            # writes data/toy_phrases/*.ogg + index.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

# This checkout's modules first (also without `pip install -e .`), then the sample-call synthesiser beside us.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from generate_sample_calls import SAMPLE_RATE, TELEPHONE_BAND, VOICES, synthesise  # noqa: E402

from safe_qaq.toy.data import PHRASES, phrase_file  # noqa: E402

OUT = Path(__file__).resolve().parent / "toy_phrases"


def generate(out: Path = OUT) -> dict[str, dict]:
    from scipy.signal import sosfilt

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng (the phrase bank is committed)")
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for key, (role, text) in PHRASES.items():
        speech = sosfilt(TELEPHONE_BAND, synthesise(text, VOICES[role])).astype(np.float32)
        speech *= 0.5 / float(np.abs(speech).max())
        name = phrase_file(key)
        sf.write(out / name, speech, SAMPLE_RATE, format="OGG", subtype="VORBIS")
        index[key] = {"file": name, "role": role, "text": text, "seconds": round(len(speech) / SAMPLE_RATE, 3)}
    (out / "index.json").write_text(json.dumps(index, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    index = generate(args.out)
    total = sum(entry["seconds"] for entry in index.values())
    size = sum((args.out / entry["file"]).stat().st_size for entry in index.values())
    print(f"{len(index)} phrases, {total:.0f} s of speech, {size / 1e6:.2f} MB in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
