"""The toy world: short synthetic calls assembled from a committed phrase bank, for CPU learning runs.

Why: with the 24 bundled calls a model can only memorise.  To show on a CPU, in minutes, that
every stage of the pipeline moves the metric it targets, the toy needs many calls whose label
is *learnable from the audio*.  Each toy call is a sequence of spoken phrases from a fixed bank
(``data/toy_phrases``, synthesised once by ``data/generate_toy_phrases.py``):

    caller greeting, callee reply              (intent not shown yet: early_stage)
    caller scene phrase, callee reply          (the scene is heard)
    caller fraud phrase / normal follow-up     (the fraud type, or that it is a normal call)
    callee reply, caller goodbye

The same phrase always sounds the same, so which words mark which label is learnable by a
tiny model; the combinations, the pauses and the noise are new in every call, so test calls
are unseen audio.  This verifies the training machinery; it is not a fraud detector.

Splits of calls, each call drawn from its own generator seeded by (seed, split, index):

* ``warmup`` -- the warm-start SFT of the toy base (the CPU analogue of an instruction-tuned
  model: it learns the answer formats and something of the task), built by the warm start;
* ``rl``     -- what the stage scripts train (prepare splits it into train/test);
* ``fresh``  -- a set from another seed, all test rows: calls no stage has seen.

CLI::

    python -m safe_qaq.toy.data --out data/toy                             # the rl split, seconds
    python -m safe_qaq.toy.data --seed 7 --fresh 80 --out data/toy/seed7   # a fresh set, prepared
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import prompt

PHRASE_DIR = Path(__file__).resolve().parents[2] / "data" / "toy_phrases"
SAMPLE_RATE = 16000
VERSION = 5  # bump when the assembly below changes: cached toy data is rebuilt
# The seed of the warm-up calls (the warm base) and the RL calls (`make toy`); fresh sets use any other.
PROJECT_SEED = 0
DEFAULT_SPLITS = {"rl": 160}

SCENE_KEYS = prompt.SCENE_HANDLES
FRAUD_KEYS = prompt.FRAUD_TYPE_HANDLES

# Which scenes each fraud type pretends (a fake customer-service call is 咨询客服 ...).
FRAUD_SCENES = {
    "investment": ("customer_service", "taxi"),
    "phishing": ("shopping", "food_ordering"),
    "identity_theft": ("customer_service", "transport"),
    "lottery": ("shopping", "delivery"),
    "bank": ("customer_service", "appointment"),
    "kidnapping": ("taxi", "transport"),
    "fake_service": ("delivery", "shopping"),
    "email": ("transport", "appointment"),
}

# The toy world's acoustic cue, which a 0.2 M-parameter model trained on bare labels picks up within a few
# hundred steps (the espeak words alone it did not): from the first phrase that shows the call's purpose on, the
# line carries the caller's setting -- a narrow band of background noise, as a street, a shop or a call centre
# sounds behind a voice.  A scene's phrases bring in the scene's band, a fraud phrase its gang's band; before
# them (the greetings) the line is quiet, so an early prefix reveals nothing.
# The bands sit on one geometric grid over the telephone band (16 % apart), scenes below 1.4 kHz and fraud gangs
# above: "is there a fraud band" is then a question about one region.  Interleaved, it hinged on telling each fraud
# band from the scene band 16 % away, and no warm start tried heard it (fraud stayed at chance, issue 16).
_BANDS_HZ = tuple(round(400 * 8 ** (i / 14)) for i in range(15))  # 400 Hz .. 3200 Hz
SCENE_AMBIENCE_HZ = dict(zip(sorted(SCENE_KEYS), _BANDS_HZ[:7], strict=True))
FRAUD_AMBIENCE_HZ = dict(zip(sorted(FRAUD_KEYS), _BANDS_HZ[7:], strict=True))
AMBIENCE_LEVEL = 0.03  # RMS of the band; speech peaks at 0.5

# key -> (speaker role, text).  "c" phrases are spoken by the caller's voice, "e" by the callee's.
_CALLER_GREETINGS = ("喂，你好。", "你好，打扰您一下。", "您好，请问是王先生吗？", "喂，听得到吗？")
_CALLEE_GREETINGS = ("您好，哪位？", "你好，请讲。", "嗯，是我，什么事？", "听得到，您说。")
_CALLEE_REPLIES = ("好的。", "是吗？", "嗯，然后呢？", "我知道了。", "这样啊。", "你说吧。")
_CALLEE_LATE_REPLIES = ("好，我想一想。", "行，没问题。", "可以，就这样吧。", "那好吧。")
_CALLER_GOODBYES = ("那就这样，再见。", "麻烦您了，再见。", "好的，拜拜。")
_SCENE_PHRASES = {
    "food_ordering": ("我想订明天晚上的包间。", "请问饭店今晚还有位置吗？", "我要订十个人的酒席。"),
    "customer_service": ("这里是营业厅客服。", "我来咨询一下话费的问题。", "客服您好，我的套餐有问题。"),
    "appointment": ("我想预约周三上午的号。", "您的体检预约改到下午了。", "帮我约一下理发的时间。"),
    "transport": ("请问去北京的火车几点开？", "航班延误了，改签在哪办？", "地铁末班车是几点？"),
    "shopping": ("您买的衣服已经发货了。", "商场这件外套有折扣吗？", "网上买的鞋子尺码不对。"),
    "taxi": ("师傅，我在路口等车。", "您叫的出租车到楼下了。", "司机您好，去火车站。"),
    "delivery": ("您的外卖到了，放门口吗？", "我是外卖骑手，马上送到。", "您点的奶茶送到了。"),
}
_NORMAL_PHRASES = {
    "food_ordering": ("到店付款就可以。", "给您留了靠窗的位置。"),
    "customer_service": ("您可以在官方营业厅办理。", "下个月套餐就生效了。"),
    "appointment": ("到时候带上身份证来就行。", "预约成功，请准时到。"),
    "transport": ("请提前半小时到车站。", "改签在柜台就能办。"),
    "shopping": ("七天之内可以免费退货。", "明天就能送到您家。"),
    "taxi": ("大概十分钟就到。", "我在白色的车旁边。"),
    "delivery": ("请给个好评，谢谢。", "餐具放在袋子里了。"),
}
_FRAUD_PHRASES = {
    "investment": ("我带您投资理财，稳赚不赔。", "这个项目收益翻倍，快把钱投进来。"),
    "phishing": ("请点击短信里的链接领取。", "登录这个网址填写银行卡号。"),
    "identity_theft": ("请把身份证号码和验证码告诉我。", "我需要您的身份证照片做登记。"),
    "lottery": ("恭喜您中了大奖，先交手续费。", "您抽中了汽车，交税才能领奖。"),
    "bank": ("您的银行卡有风险，转到安全账户。", "我是银行的，您的账户被冻结了。"),
    "kidnapping": ("你的孩子在我手上，马上打钱。", "不想家人出事，就别报警。"),
    "fake_service": ("您的订单出了问题，我给您退款。", "退款要先开通备用金，请转账。"),
    "email": ("我们给您发了邮件，按邮件付款。", "请查看邮件里的账单，今天转账。"),
}


def _bank() -> dict[str, tuple[str, str]]:
    bank: dict[str, tuple[str, str]] = {}
    for name, role, texts in (
        ("greet", "caller", _CALLER_GREETINGS),
        ("greet_reply", "callee", _CALLEE_GREETINGS),
        ("reply", "callee", _CALLEE_REPLIES),
        ("late_reply", "callee", _CALLEE_LATE_REPLIES),
        ("bye", "caller", _CALLER_GOODBYES),
    ):
        for i, text in enumerate(texts):
            bank[f"{name}.{i}"] = (role, text)
    for group, table in (("scene", _SCENE_PHRASES), ("normal", _NORMAL_PHRASES), ("fraud", _FRAUD_PHRASES)):
        for key, texts in table.items():
            for i, text in enumerate(texts):
                bank[f"{group}.{key}.{i}"] = ("caller", text)
    return bank


#: Every phrase of the toy world: key -> (speaker role, text).
PHRASES: dict[str, tuple[str, str]] = _bank()

# A checklist a warm-start answer thinks through, in this order, before its conclusion, stopping after a
# random number of items: removable reasoning, so the length rewards have something to act on.  Longer
# checklists are likelier, so the warm base's greedy answer thinks through all of them.
THOUGHTS = ("先听身份。", "再听来意。", "留意要求。", "注意转账。")
THOUGHT_WEIGHTS = (0.1, 0.1, 0.15, 0.25, 0.4)  # P(k items), k = 0..4


def phrase_file(key: str) -> str:
    return key.replace(".", "_") + ".ogg"


def _phrases(keys: Sequence[str], directory: Path) -> dict[str, np.ndarray]:
    import soundfile as sf

    audio = {}
    for key in keys:
        path = directory / phrase_file(key)
        if not path.exists():
            raise FileNotFoundError(f"{path}: toy phrase missing; run data/generate_toy_phrases.py (needs espeak-ng)")
        samples, rate = sf.read(path, dtype="float32")
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path}: {rate} Hz, expected {SAMPLE_RATE}")
        audio[key] = samples
    return audio


def plan_call(rng: random.Random, fraud: bool, long: bool = False) -> dict[str, Any]:
    """Labels and the phrase keys of one toy call, turn by turn."""
    if fraud:
        fraud_key = rng.choice(sorted(FRAUD_KEYS))
        scene_key = rng.choice(FRAUD_SCENES[fraud_key])
    else:
        fraud_key, scene_key = None, rng.choice(sorted(SCENE_KEYS))
    pick = lambda group, n: f"{group}.{rng.randrange(n)}"  # noqa: E731
    turns = [pick("greet", len(_CALLER_GREETINGS)), pick("greet_reply", len(_CALLEE_GREETINGS))]
    rounds = 2 if long else 1
    for _ in range(rounds):
        turns += [f"scene.{scene_key}.{rng.randrange(3)}", pick("reply", len(_CALLEE_REPLIES))]
        if fraud:
            turns.append(f"fraud.{fraud_key}.{rng.randrange(2)}")
        else:
            turns.append(f"normal.{scene_key}.{rng.randrange(2)}")
        turns.append(pick("late_reply", len(_CALLEE_LATE_REPLIES)))
    if long:  # long calls repeat their intent before the goodbye, so they run past one 30 s chunk
        turns += [f"{'fraud.' + fraud_key if fraud else 'normal.' + scene_key}.{rng.randrange(2)}"] * 2
        turns.append(pick("reply", len(_CALLEE_REPLIES)))
    turns.append(pick("bye", len(_CALLER_GOODBYES)))
    return {
        "scene": SCENE_KEYS[scene_key],
        "label": prompt.FRAUD if fraud else prompt.NORMAL,
        "fraud_type": FRAUD_KEYS[fraud_key] if fraud else None,
        "scene_key": scene_key,
        "fraud_key": fraud_key,
        "phrases": turns,
    }


def phrase_band(key: str) -> int | None:
    """The background band a phrase is spoken over (Hz), or None for phrases that carry no label."""
    group, _, rest = key.partition(".")
    name = rest.split(".")[0]
    if group in ("scene", "normal"):
        return SCENE_AMBIENCE_HZ[name]
    return FRAUD_AMBIENCE_HZ[name] if group == "fraud" else None


def ambience(centre_hz: float, n: int, seed: int) -> np.ndarray:
    """White noise band-passed to +-4 % around ``centre_hz``, at :data:`AMBIENCE_LEVEL` RMS."""
    from scipy.signal import butter, sosfilt

    band = butter(2, [centre_hz / 1.04, centre_hz * 1.04], btype="band", fs=SAMPLE_RATE, output="sos")
    noise = sosfilt(band, np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    return noise * (AMBIENCE_LEVEL / max(float(np.sqrt(np.mean(noise**2))), 1e-9))


def render(plan: dict[str, Any], audio: dict[str, np.ndarray], rng: random.Random) -> tuple[np.ndarray, list[dict]]:
    """The call's audio (pauses, per-turn gain, background and line noise drawn from ``rng``) and timed turns."""
    pieces = [np.zeros(int(rng.uniform(0.2, 0.5) * SAMPLE_RATE), np.float32)]
    cursor = len(pieces[0])
    turns = []
    starts: dict[int, int] = {}  # band -> sample where it comes in (and stays until the end)
    for key in plan["phrases"]:
        role, text = PHRASES[key]
        speech = audio[key] * rng.uniform(0.6, 1.0)
        centre = phrase_band(key)
        if centre is not None:
            starts.setdefault(centre, cursor)
        turns.append(
            {
                "speaker": role,
                "start": round(cursor / SAMPLE_RATE, 2),
                "end": round((cursor + len(speech)) / SAMPLE_RATE, 2),
                "text": text,
            }
        )
        pause = np.zeros(int(rng.uniform(0.3, 0.8) * SAMPLE_RATE), np.float32)
        pieces += [speech.astype(np.float32), pause]
        cursor += len(speech) + len(pause)
    signal = np.concatenate(pieces)
    for centre, start in starts.items():
        signal[start:] += ambience(centre, len(signal) - start, rng.getrandbits(32))
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(len(signal)).astype(np.float32)
    signal = signal + 0.003 * noise  # a quiet line hiss: no two calls are bit-identical
    return np.clip(signal, -1.0, 1.0), turns


def build(
    out: str | Path,
    *,
    splits: dict[str, int] | None = None,
    seed: int = 0,
    long_fraction: float = 0.1,
    phrase_dir: Path = PHRASE_DIR,
) -> dict[str, Path]:
    """Write ``<out>/<split>.jsonl`` (our metadata format) and the calls' FLAC files; reuse a same build.

    Every call draws from its own generator, seeded by (``seed``, split, index): a split is the same
    whichever other splits are built with it, and another ``seed`` gives calls never built before.
    """
    import soundfile as sf

    splits = splits if splits is not None else dict(DEFAULT_SPLITS)
    out = Path(out)
    recipe = {"version": VERSION, "splits": splits, "seed": seed, "long_fraction": long_fraction}
    marker = out / "toy_build.json"
    paths = {name: out / f"{name}.jsonl" for name in splits}
    if marker.exists() and json.loads(marker.read_text()) == recipe and all(p.exists() for p in paths.values()):
        return paths
    audio = _phrases(list(PHRASES), phrase_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for name, count in splits.items():
        records = []
        for i in range(count):
            call_rng = random.Random(f"{seed}:{name}:{i}")
            plan = plan_call(call_rng, fraud=i % 2 == 1, long=call_rng.random() < long_fraction)
            signal, turns = render(plan, audio, call_rng)
            call_id = f"toy_{name}_s{seed}_{i:04d}"
            rel = f"audio/{call_id}.flac"
            sf.write(out / rel, signal, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            records.append(
                {
                    "id": call_id,
                    "audio": rel,
                    "duration": round(len(signal) / SAMPLE_RATE, 2),
                    "scene": plan["scene"],
                    "label": plan["label"],
                    "fraud_type": plan["fraud_type"],
                    "turns": turns,
                }
            )
        with open(paths[name], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    marker.write_text(json.dumps(recipe))
    return paths


def build_fresh(out: str | Path, seed: int, calls: int) -> Path:
    """A prepared toy set of ``calls`` calls from ``seed`` (all of them test rows), for measuring trained models.

    Refuses the seed the warm base and the RL calls are built from: its calls would not be new.
    """
    from safe_qaq import prepare

    if seed == PROJECT_SEED:
        raise ValueError(f"--seed {seed} is the seed the warm-up and RL calls are built from; pick another")
    out = Path(out)
    paths = build(out, splits={"fresh": calls}, seed=seed)
    prepared = out / "prepared"
    code = prepare.main(["--input", str(paths["fresh"]), "--out", str(prepared), "--test-fraction", "1",
                         "--no-progress", "--workers", "1"])  # fmt: skip
    if code != 0:
        raise SystemExit(f"preparing {paths['fresh']} failed (exit {code})")
    return prepared


# ---------------------------------------------------------------------------
# Warm-start targets
# ---------------------------------------------------------------------------


def varied_answer(row: dict[str, Any], rng: random.Random, *, null_early: float = 0.5) -> str:
    """A gold answer for an SFT row that thinks through the first k :data:`THOUGHTS` before its conclusion.

    Real-time rows at ``early_stage`` answer ``null`` ("not enough audio yet") with probability
    ``null_early``, else the gold label: the warm base knows both moves, and stage 3 learns when
    each pays.
    """
    task, gold, stage = row["task"], row["answers"], row.get("conversation_stage") or prompt.COMPLETE
    realtime = "prefix_end_s" in row
    label: str | None = gold
    if realtime and stage == prompt.EARLY_STAGE and rng.random() < null_early:
        label = None
    conclusion = prompt.format_answer(task, label, mode="realtime" if realtime else "offline", stage=stage)
    from safe_qaq.answer import parse_answer

    reason = parse_answer(conclusion).obj["reason"]
    thoughts = THOUGHTS[: rng.choices(range(len(THOUGHT_WEIGHTS)), weights=THOUGHT_WEIGHTS)[0]]
    return prompt.format_answer(
        task,
        label,
        mode="realtime" if realtime else "offline",
        stage=stage,
        reason=reason,
        think="".join(thoughts) + reason,
    )


def warm_rows(rows: Sequence[dict[str, Any]], seed: int = 0, **kwargs: Any) -> list[dict[str, Any]]:
    """SFT rows with their final answer replaced by :func:`varied_answer` (history turns kept)."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        answer = varied_answer(row, rng, **kwargs)
        question = prompt.question_of(row["messages"])
        out.append({**row, "messages": [*question, {"role": "assistant", "content": answer}]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe_qaq.toy.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/toy")
    parser.add_argument("--seed", type=int, default=PROJECT_SEED)
    parser.add_argument("--rl-calls", type=int, default=DEFAULT_SPLITS["rl"], help="calls of the rl split")
    parser.add_argument("--warmup-calls", type=int, default=0, help="calls of the warmup split (the warm base's)")
    parser.add_argument(
        "--fresh", type=int, metavar="N",
        help="instead: N calls from --seed (not the project's), prepared as test rows into <out>/prepared",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.fresh is not None:
        try:
            prepared = build_fresh(args.out, args.seed, args.fresh)
        except ValueError as error:
            parser.error(str(error))
        print(f"fresh toy set (seed {args.seed}, {args.fresh} calls): {prepared}")
        return 0
    splits = {name: n for name, n in (("warmup", args.warmup_calls), ("rl", args.rl_calls)) if n}
    paths = build(args.out, splits=splits, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
