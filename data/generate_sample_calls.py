"""Generate the bundled sample phone calls (Chinese, synthesised with espeak-ng).

Why: TeleAntiFraud-28k cannot be downloaded here, yet a newcomer must be able to run the
whole pipeline.  This script writes 24 short two-speaker calls -- 12 normal calls covering
the 7 scenes and 12 fraud calls covering the 8 fraud types -- as 16 kHz mono FLAC plus
``metadata.jsonl`` (one call per line: id, audio, duration, scene, label, fraud_type and the
transcript by turn with speaker and start/end seconds).  The output is committed, so users
without espeak-ng can still run the demo; rerun this only to change the calls.

Reproducible: the dialogues are fixed below, the per-call voice jitter and the pauses come
from ``random.Random(seed)``, and espeak-ng is deterministic for a given version (1.51 made
the committed files).  The two speakers differ in voice variant, pitch and speed.

Usage::

    apt-get install espeak-ng
    python data/generate_sample_calls.py --out data/calls --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, sosfilt

try:
    import prompt
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import prompt

SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 10.0, 40.0

# English handles for the label strings, which only prompt.py spells.
SCENE = prompt.SCENE_HANDLES
FRAUD_TYPE = prompt.FRAUD_TYPE_HANDLES

# Telephone channel (300-3400 Hz): sounds like a phone call and makes the FLAC files ~25% smaller.
TELEPHONE_BAND = butter(4, [300, 3400], btype="band", fs=SAMPLE_RATE, output="sos")


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice with variant
    pitch: int  # 0-99
    speed: int  # words per minute


# Caller: low male voice, a little faster; callee: female variant, higher pitch.
VOICES = {"caller": Voice("cmn", 35, 330), "callee": Voice("cmn+f2", 72, 310)}

# (scene, fraud_type or None, turns); "c" = caller (who dialled), "e" = callee.
# Fraud calls carry the scene the fraudster pretends (a fake customer-service call is 咨询客服).
CALLS: list[tuple[str, str | None, list[tuple[str, str]]]] = [
    # ---- normal calls -------------------------------------------------------------
    (
        "delivery",
        None,
        [
            ("c", "喂，您好，我是外卖骑手，您在幸福里小区点的麻辣烫到了。"),
            ("e", "好的，谢谢，我在三号楼。"),
            ("c", "小区门口保安不让电动车进去，我找不到三号楼在哪。"),
            ("e", "你从东门进来，右手边第二栋就是，我下楼接你吧。"),
            ("c", "好的，那我在东门等您，麻烦快一点，后面还有单子。"),
            ("e", "马上到，两分钟。"),
        ],
    ),
    (
        "food_ordering",
        None,
        [
            ("c", "你好，是老街坊饭店吗？我想订明天晚上的包间。"),
            ("e", "您好，是的。请问几位用餐，大概几点到？"),
            ("c", "十个人，六点半左右，给老人过生日。"),
            ("e", "好的，明晚六点半的大包间给您留着，需要提前准备长寿面吗？"),
            ("c", "要的，谢谢。"),
            ("e", "没问题，请留一下您的姓氏，到店付款就可以。"),
            ("c", "我姓王，就是这个电话。"),
        ],
    ),
    (
        "customer_service",
        None,
        [
            ("c", "你好，我想问一下我这个月的流量怎么用得这么快？"),
            ("e", "您好，我帮您查一下，您本月已经用了二十个G，主要是视频软件。"),
            ("c", "那有没有便宜一点的流量包？"),
            ("e", "有一个三十元四十G的月包，您可以在官方营业厅app里自己办理，下个月生效。"),
            ("c", "好的，我自己在app里看看。"),
            ("e", "好的，还有其他问题吗？"),
            ("c", "没有了，谢谢。"),
        ],
    ),
    (
        "appointment",
        None,
        [
            ("c", "喂，是星光理发店吗？我想预约周六下午剪头发。"),
            ("e", "您好，周六下午三点和四点半还有空位，您要哪个时间？"),
            ("c", "三点吧，我想找李师傅。"),
            ("e", "好的，已经给您约了李师傅，周六下午三点，到时候报手机尾号就行。"),
            ("c", "好，谢谢，周六见。"),
        ],
    ),
    (
        "transport",
        None,
        [
            ("c", "您好，我想问一下明天早上去杭州的高铁还有票吗？"),
            ("e", "您好，明天早上七点十分和八点二十的车次还有二等座。"),
            ("c", "八点二十那趟几点到？"),
            ("e", "九点三十五到杭州东站，您可以在网上购票，也可以到车站窗口买。"),
            ("c", "老人带身份证原件就可以吗？"),
            ("e", "对，乘车人都要带身份证原件，进站要刷证。"),
            ("c", "明白了，谢谢。"),
        ],
    ),
    (
        "shopping",
        None,
        [
            ("c", "您好，这里是万达广场运动鞋专柜，您上周预订的四十二码跑鞋到货了。"),
            ("e", "太好了，我什么时候可以去拿？"),
            ("c", "我们每天早上十点到晚上十点营业，您带上订单小票就可以来取。"),
            ("e", "定金我已经付过了，剩下的到店付对吗？"),
            ("c", "对，剩下的三百元到店付，刷卡或者扫码都行。"),
            ("e", "好的，我周末过去。"),
        ],
    ),
    (
        "taxi",
        None,
        [
            ("c", "您好，我是网约车司机，车牌尾号三八六，已经到您定位的地点了。"),
            ("e", "师傅，我在地铁站二号出口，你在哪边？"),
            ("c", "我在马路对面的公交站旁边，这里不能停太久。"),
            ("e", "好的，我过马路，白色的车对吧？"),
            ("c", "对，白色轿车，打着双闪。"),
            ("e", "看到了，马上过来。"),
        ],
    ),
    (
        "delivery",
        None,
        [
            ("c", "您好，我是川味小馆，您刚才在外卖平台点了一份水煮鱼和一份宫保鸡丁。"),
            ("e", "对，是我点的，有什么问题吗？"),
            ("c", "实在不好意思，今天的鱼已经卖完了，换成水煮牛肉可以吗？价格一样。"),
            ("e", "水煮牛肉也行，不要太辣，家里有小孩。"),
            ("c", "好的，给您做微辣。宫保鸡丁里有花生，小朋友过敏吗？"),
            ("e", "不过敏，没关系。大概多久能送到？"),
            ("c", "做好大概二十分钟，骑手送过去还要十五分钟左右，您不用做任何操作。"),
            ("e", "好的，谢谢，辛苦了。"),
        ],
    ),
    (
        "customer_service",
        None,
        [
            ("c", "你好，我在网上买的电饭煲有点问题，想退货。"),
            ("e", "您好，请问是什么问题呢？"),
            ("c", "用了两次，加热指示灯一直闪，煮不熟饭。"),
            ("e", "这属于质量问题，您在订单页面申请退货，快递员会上门取件，运费由商家承担。"),
            ("c", "钱什么时候退给我？"),
            ("e", "商家收到货后，钱会原路退回，一般三到五个工作日。"),
            ("c", "好的，我现在就去申请。"),
        ],
    ),
    (
        "appointment",
        None,
        [
            ("c", "您好，这里是市第一人民医院，提醒您明天上午九点有口腔科的预约。"),
            ("e", "对，我记得，需要带什么吗？"),
            ("c", "请带上身份证和医保卡，提前十五分钟到二楼自助机取号。"),
            ("e", "如果我想改到下午可以吗？"),
            ("c", "可以，您在医院公众号上就能改约，下午还有号。"),
            ("e", "好的，谢谢提醒。"),
        ],
    ),
    (
        "transport",
        None,
        [
            ("c", "喂，公交热线吗？我想问一下去市图书馆坐几路车？"),
            ("e", "您好，您现在在哪里？"),
            ("c", "我在人民公园南门。"),
            ("e", "您可以坐十二路，坐五站到文化中心站下车，往前走两百米就是图书馆。"),
            ("c", "十二路末班车几点？"),
            ("e", "末班车是晚上十点半。"),
            ("c", "好的，谢谢。"),
        ],
    ),
    (
        "shopping",
        None,
        [
            ("c", "您好，我是生鲜超市的配送员，您在小程序上买的蔬菜和水果现在给您送过去。"),
            ("e", "好的，我下午在家。"),
            ("c", "您订的草莓今天不太新鲜，店里给您换成了蓝莓，多出来的钱不用补。"),
            ("e", "可以，蓝莓也行。鸡蛋帮我放在上面，别压碎了。"),
            ("c", "放心，鸡蛋单独装了一个袋子，大概三点钟到。"),
            ("e", "我家电梯在修，你能不能放在一楼的快递柜里？"),
            ("c", "生鲜放快递柜不太好，我给您送上楼吧，几楼？"),
            ("e", "六楼，太感谢了。"),
        ],
    ),
    # ---- fraud calls --------------------------------------------------------------
    (
        "customer_service",
        "investment",
        [
            ("c", "您好，我是恒信证券的客服，看到您之前在我们这里开过户。"),
            ("e", "开户是开过，好久没炒了。"),
            ("c", "我们现在有一个内部投资群，由首席老师带单，每周收益能到百分之二十。"),
            ("e", "这么高？靠谱吗？"),
            ("c", "绝对靠谱。您下载我们的专用平台，先充值五万元就可以跟单。"),
            ("e", "我要考虑一下。"),
            ("c", "名额有限，今天不充值就没有机会了。"),
        ],
    ),
    (
        "shopping",
        "phishing",
        [
            ("c", "你好，我是快递公司理赔中心，你在网上买的衣服在运输中丢失了。"),
            ("e", "啊？那怎么办？"),
            ("c", "我们给你三倍赔偿，你点开短信里的链接，填写银行卡号和密码。"),
            ("e", "还要填密码吗？"),
            ("c", "对，系统核实需要，填完赔偿款马上到账，还要把收到的验证码告诉我。"),
            ("e", "我还是先问问商家吧。"),
        ],
    ),
    (
        "customer_service",
        "identity_theft",
        [
            ("c", "喂，这里是市公安局刑侦支队，我姓张。你的身份证涉嫌一起洗钱案件。"),
            ("e", "什么？我没做过违法的事情啊。"),
            ("c", "有人用你的身份信息开了银行账户。为了证明清白，你把身份证号和银行卡号报给我核实。"),
            ("e", "这么重要的信息能在电话里说吗？"),
            ("c", "这是保密案件，不能告诉家人。核实完还要把存款转到安全账户进行清查。"),
            ("e", "公安局怎么会让人转账呢？"),
            ("c", "不配合的话，马上冻结你名下所有账户。"),
        ],
    ),
    (
        "shopping",
        "lottery",
        [
            ("c", "恭喜您！我是乐购商城的，您被抽中了二等奖，奖金两万元。"),
            ("e", "真的吗？我怎么没收到通知？"),
            ("c", "今天刚刚开奖。领奖之前需要先交百分之十的个人所得税，也就是两千元。"),
            ("e", "税不是从奖金里扣吗？"),
            ("c", "按规定要先交税才能发奖，您把钱转到公证处的账户，奖金三天内到账。"),
            ("e", "我从来没听说过领奖还要先交钱。"),
        ],
    ),
    (
        "customer_service",
        "bank",
        [
            ("c", "您好，我是银行信用卡中心的，您的信用卡有一笔异常消费，额度将被冻结。"),
            ("e", "我最近没有刷卡啊。"),
            ("c", "可能是卡片被盗刷了。我帮您办理解冻，您会收到一条验证码短信，请把验证码念给我。"),
            ("e", "银行不是说验证码不能告诉别人吗？"),
            ("c", "我是银行工作人员，不是别人。十分钟内不处理，您的征信会受影响。"),
            ("e", "我还是去柜台办吧。"),
        ],
    ),
    (
        "taxi",
        "kidnapping",
        [
            ("c", "喂，你是王小丽的妈妈吗？你女儿刚才坐我的车，现在在我手上。"),
            ("e", "你是谁？我女儿怎么了？让她接电话！"),
            ("c", "她现在不方便说话。你马上准备十万块钱，转到我给你的账户，不许报警。"),
            ("e", "我怎么知道你说的是真的？"),
            ("c", "你要是报警，就再也见不到她了。给你半个小时，先转五万。"),
            ("e", "你别伤害她，我现在就去凑钱。"),
            ("c", "电话不要挂，一直保持通话，也不要给任何人打电话。"),
            ("e", "好，好，我不挂。"),
        ],
    ),
    (
        "customer_service",
        "fake_service",
        [
            ("c", "您好，我是购物平台客服，您购买的儿童玩具被检测出质量问题，我们要给您办理退款。"),
            ("e", "好的，怎么退？"),
            ("c", "您先在支付软件里借出五百元，转到我们的退款账户，系统会连同赔偿一起退给您。"),
            ("e", "退款为什么要我先借钱转账？"),
            ("c", "这是系统流程。我们开一个屏幕共享，我一步一步教您操作。"),
            ("e", "不用了，我自己在订单里申请。"),
        ],
    ),
    (
        "transport",
        "email",
        [
            ("c", "您好，这里是航空公司客服，您明天飞往成都的航班因机械故障取消了。"),
            ("e", "啊，那我怎么办？"),
            ("c", "我们给您的邮箱发了理赔邮件，请打开附件填写银行卡信息，领取三百元补偿。"),
            ("e", "我怎么没在航空公司app上看到通知？"),
            ("c", "系统还没同步。邮件里的链接今天晚上就失效了，请尽快操作。"),
            ("e", "我先打官方电话确认一下。"),
        ],
    ),
    (
        "delivery",
        "fake_service",
        [
            ("c", "您好，我是外卖平台的客服，您昨天点的那家餐厅被查出食品安全问题，平台要给您双倍赔偿。"),
            ("e", "是吗？我吃了没什么不舒服。"),
            ("c", "赔偿是按规定发放的。您下载一个会议软件，我通过屏幕共享帮您领取。"),
            ("e", "为什么不直接退到我的账户里？"),
            ("c", "您的账户等级不够，需要先交一笔保证金激活，激活后连同赔偿一起返还。"),
            ("e", "那我不要了。"),
        ],
    ),
    (
        "food_ordering",
        "phishing",
        [
            ("c", "您好，是李先生吗？我是海景酒楼，您预订了周六的婚宴，需要先付百分之三十的定金。"),
            ("e", "我们跟酒楼经理当面谈的，定金不是下周付吗？"),
            ("c", "经理换人了，新规定是今天必须付。我发给您一个付款链接，输入银行卡号和验证码就行。"),
            ("e", "付款链接？为什么不去店里付？"),
            ("c", "不付的话，周六的场地就要给别人了。"),
            ("e", "我先给经理本人打个电话。"),
        ],
    ),
    (
        "appointment",
        "bank",
        [
            ("c", "您好，这里是银行贷款预约中心，您在网上申请的二十万元低息贷款已经审批通过了。"),
            ("e", "我好像是填过一个表。"),
            ("c", "放款前要预约面签，不过您的流水不够，需要先转一万元到指定账户刷流水，放款时一起退还。"),
            ("e", "这是银行的要求吗？"),
            ("c", "对，这是内部规定，今天不预约的话名额就作废了。"),
            ("e", "我去银行网点问问再说。"),
        ],
    ),
    (
        "taxi",
        "investment",
        [
            ("c", "师傅您好，我是快车车队的招商经理，看到您在平台上跑车很多年了。"),
            ("e", "是啊，跑了五年了，有什么事？"),
            ("c", "我们推出一个新能源车投资计划，您投十万元，每个月稳定返利八千元。"),
            ("e", "每个月八千？那一年就回本了？"),
            ("c", "对，而且保本。现在先交两万元定金锁定名额，后面再补齐。"),
            ("e", "有合同吗？公司在哪里？"),
            ("c", "合同是电子版的，你直接把钱转到我个人账户上，内部走账更快。"),
            ("e", "转个人账户不太放心啊。"),
        ],
    ),
]


def synthesise(text: str, voice: Voice) -> np.ndarray:
    """One utterance as float32 mono at 16 kHz."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    # espeak pads each utterance with silence; trim it so the turn times are the speech.
    voiced = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[voiced[0] : voiced[-1] + 1] if voiced.size else samples


def render_call(turns: list[tuple[str, str]], rng: random.Random) -> tuple[np.ndarray, list[dict]]:
    """Concatenate the turns with short pauses; return the audio and the timed transcript."""
    jitter = {role: (rng.randint(-4, 4), rng.randint(-8, 8)) for role in VOICES}
    pieces = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)]
    cursor = len(pieces[0])
    timed = []
    for who, text in turns:
        role = "caller" if who == "c" else "callee"
        base = VOICES[role]
        dp, ds = jitter[role]
        speech = synthesise(text, Voice(base.name, base.pitch + dp, base.speed + ds))
        start = cursor / SAMPLE_RATE
        pieces.append(speech)
        cursor += len(speech)
        timed.append({"speaker": role, "start": round(start, 2), "end": round(cursor / SAMPLE_RATE, 2), "text": text})
        gap = np.zeros(int(rng.uniform(0.25, 0.6) * SAMPLE_RATE), np.float32)
        pieces.append(gap)
        cursor += len(gap)
    audio = sosfilt(TELEPHONE_BAND, np.concatenate(pieces)).astype(np.float32)
    # Peak at -6 dBFS: ordinary phone-recording level, and FLAC stores one bit less per sample.
    audio *= 0.5 / float(np.abs(audio).max())
    return audio, timed


def generate(out: Path, seed: int = 0, only: set[str] | None = None) -> list[dict]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit(
            "espeak-ng not found: apt-get install espeak-ng (the generated calls are committed in data/calls)"
        )
    rng = random.Random(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    records = []
    for index, (scene, fraud_type, turns) in enumerate(CALLS, start=1):
        call_id = f"call_{index:03d}"
        # One child generator per call keeps a call's pauses independent of which calls run.
        call_rng = random.Random(rng.getrandbits(64))
        if only is not None and call_id not in only:
            continue
        audio, timed = render_call(turns, call_rng)
        duration = len(audio) / SAMPLE_RATE
        if not MIN_SECONDS <= duration <= MAX_SECONDS:
            raise SystemExit(f"{call_id}: {duration:.1f} s is outside [{MIN_SECONDS}, {MAX_SECONDS}] s; edit its turns")
        rel = f"audio/{call_id}.flac"
        sf.write(out / rel, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        records.append(
            {
                "id": call_id,
                "audio": rel,
                "duration": round(duration, 2),
                "scene": SCENE[scene],
                "label": prompt.NORMAL if fraud_type is None else prompt.FRAUD,
                "fraud_type": None if fraud_type is None else FRAUD_TYPE[fraud_type],
                "turns": timed,
            }
        )
        print(f"{call_id}  {duration:5.1f} s  {records[-1]['label']:6s}  {records[-1]['scene']}", file=sys.stderr)
    if only is None:
        with open(out / "metadata.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", default=None, help="comma-separated call ids to regenerate (metadata.jsonl is then left untouched)"
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    records = generate(args.out, args.seed, only)
    total = sum(r["duration"] for r in records)
    print(f"{len(records)} calls, {total:.1f} s of audio written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
