"""Turn phone-call records into the ms-swift jsonl files every training stage reads.

Usage::

    python -m safe_qaq.prepare --input data/calls/metadata.jsonl --out data/prepared

Inputs (``--input`` may repeat; the format is detected per row):

* our metadata JSONL -- ``{"id", "audio", "duration", "scene", "label", "fraud_type", "turns"}``
  with ``audio`` relative to the metadata file (``data/calls/metadata.jsonl``);
* the TeleAntiFraud release -- a JSON list (or JSONL) of
  ``{"prompt": [..., {"role": "user", "content": [{"type": "audio", "audio_url": "audio/x.wav"}, ...]}],
  "answer": "fraud"}`` with audio relative to the JSON file.  The record's audio and label
  are kept; the questions asked are ours (prompt.py).  Records that point at the same audio
  file are merged into one call, so the scene / fraud / fraud-type files of the release
  rebuild the three-round conversation.

Outputs in ``--out`` (README "Data" explains the columns, the stage rule and the long-call policy):
``offline_{train,test}.jsonl`` and ``realtime_{train,test}.jsonl`` (GRPO prompts),
``sft_{train,test}.jsonl`` and ``sft_realtime_{train,test}.jsonl`` (gold-answer SFT rows),
``calls_{train,test}.jsonl``, ``split.json``, ``rejects.jsonl``, ``summary.json`` and
``audio/`` (cut chunks and prefixes, written once and reused by later runs).

Every audio is size-checked from its header, then decoded once, resampled to 16 kHz mono and
checked; a bad row is written to ``rejects.jsonl`` with the file, row and reason, never dropped
silently.  Calls are planned and cut with :mod:`safe_qaq.calls` and
:func:`safe_qaq.audio.cut_chunks`, as live inference cuts them.  The exit status is 1 when more
than ``--max-reject-fraction`` of the rows were rejected (default 5%).

One module per job: :mod:`~safe_qaq.prepare.sources` (reading a file, JSON list or JSONL),
:mod:`~safe_qaq.prepare.records` (the two record formats), :mod:`~safe_qaq.prepare.merge`
(records of one audio file into one call), :mod:`~safe_qaq.prepare.audio_jobs` (decode, check,
cut), :mod:`~safe_qaq.prepare.rows` (split and rows), :mod:`~safe_qaq.prepare.pipeline` (the
run and its summary), :mod:`~safe_qaq.prepare.options` and :mod:`~safe_qaq.prepare.cli`.
"""

from safe_qaq.prepare.cli import main
from safe_qaq.prepare.options import Options
from safe_qaq.prepare.pipeline import format_summary, prepare

__all__ = ["Options", "format_summary", "main", "prepare"]
