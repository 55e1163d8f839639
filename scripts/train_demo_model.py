"""Train tokentrim's demo model from scratch on CPU and write it to tokentrim_cli/demo_model/.

The committed weights come from five runs on 2 CPU cores (157 minutes in all), each continuing
the one before (runs 4 and 5 were written to a scratch directory and continued from there; the
`training.json` beside the weights records each command as run):

    python scripts/train_demo_model.py                                          # 53 min
    python scripts/train_demo_model.py --init tokentrim_cli/demo_model --vision-steps 0 \
        --answer-steps 450 --lr 0.0015 --seed 1                                 # 29 min
    python scripts/train_demo_model.py --init tokentrim_cli/demo_model --vision-steps 0 \
        --answer-steps 280 --lr 0.001 --seed 2 --shape-share 1.0                # 20 min
    python scripts/train_demo_model.py --init tokentrim_cli/demo_model --vision-steps 0 \
        --answer-steps 250 --lr 0.0015 --seed 5 --drawn-share 0.75 --yes-no-share 0.75 \
        --named-word-weight 1.0                                                 # 19 min
    python scripts/train_demo_model.py --init tokentrim_cli/demo_model --vision-steps 0 \
        --answer-steps 500 --lr 0.0015 --seed 7 --drawn-share 0.75 --yes-no-share 0.65 \
        --negated-share 0.35 --named-word-weight 1.0 --match-weight 1.0         # 36 min

After run 3 the model answered yes/no questions from their wording alone (held-out accuracy
85%); runs 4 and 5 teach it to check the picture, with yes/no-heavy batches of drawn pictures and
two auxiliary losses (see `train_answers`): held-out accuracy 92%, balanced yes/no on drawn
pictures 53% -> 74%.

A `LlavaForConditionalGeneration`: CLIP vision tower (64x64 pictures, patch 4: 256 visual tokens),
LLaVA's two-layer projector, and a Llama decoder as deep as LLaVA-1.5-7B's (32 layers, so every
shipped profile applies as written) but only 64 wide. A word-level tokenizer over easy-VQA's
vocabulary with LLaVA-1.5's chat template, and a LlavaProcessor: a Hugging Face checkpoint
directory like any other.

Two stages (the feasibility study found that recognising the shape end to end is the hard part):
1. the vision tower alone learns shape and colour labels of freshly drawn pictures (scripts/shapes.py:
   the easy-VQA kind of picture, never easy-VQA's own): the shape from its CLS token, the colour
   from its mean patch token;
2. everything together learns to answer: part of each batch is easy-VQA training questions on their
   pictures (half by default), the rest freshly drawn pictures with generated questions (their
   mix: --shape-share, --yes-no-share, --negated-share). Loss on the answer and </s> only, plus
   the optional auxiliary losses.

easy-VQA's test split is never read. 200 training pictures are held out to monitor teacher-forced
accuracy, and 200 drawn pictures with balanced yes/no questions (easy-VQA's own yes/no answers can
mostly be guessed from the wording: 7 of 8 colours are absent). Every run is seeded (data order,
pictures, initialisation), so the same torch version and thread count should give the same
weights; that was not re-checked bit for bit (157 min).
Needs `pip install easy-vqa` (the `eval` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import shapes
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tokentrim_cli" / "demo_model"
IMAGE_SIZE, PATCH = 64, 4
HELD_OUT = 200  # training pictures kept aside to monitor accuracy
VALIDATION_YES_NO, VALIDATION_SEED = 200, 12345  # drawn pictures with balanced yes/no questions
NAMED_WORD_LAYERS, MATCH_LAYER = (8, 16), 24  # where the auxiliary losses read (train_answers)


MODEL_CARD = """# tokentrim demo model

A tiny LLaVA (`LlavaForConditionalGeneration`) trained from scratch on CPU by
`scripts/train_demo_model.py`, so that tokentrim runs offline and trimming methods can be scored
on real questions. `training.json` lists every training run that led to these weights (command,
arguments, minutes, versions, held-out accuracy), oldest under `after`.

- Vision: CLIP tower, 64x64 pictures, patch 4: 256 visual tokens (+ CLS), hidden 96, 3 layers.
- Projector: LLaVA's two-layer GELU MLP. Decoder: Llama, 32 layers (LLaVA-1.5-7B's depth, so the
  shipped profiles apply as written), hidden 64, 4 heads. About 2.1 M parameters, stored in bf16.
- Tokenizer: word level over easy-VQA's vocabulary (lower-cased; other words read as `<unk>`),
  LLaVA-1.5's chat template `USER: <image>\\n{question} ASSISTANT:`.
- Data: easy-VQA's training split (MIT licence; 200 of its pictures held out for monitoring) and
  pictures of the same kind drawn by `scripts/shapes.py`. easy-VQA's test split was never read.

It answers easy-VQA's kind of question about one coloured circle, rectangle or triangle in one
word, reading the picture for open questions (what shape, what colour) and for yes/no ones (is
there a red shape?), the latter less reliably (shape yes/no questions most of all). Accuracy per
trimming profile and per kind of question on easy-VQA's test split: `benchmarks/README.md`.
"""


def log(*parts) -> None:
    print(*parts, flush=True)


# ---- tokenizer, processor, model ----------------------------------------------------------------


def build_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    from tokentrim_cli.model import LLAVA_CHAT_TEMPLATE, llava_tokenizer

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {token: index for index, token in enumerate(specials + sorted(set(words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()  # easy-VQA is lower case; "What shape..." still reads
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no space before "?"
    return llava_tokenizer(backend, LLAVA_CHAT_TEMPLATE)


def build_processor(tokenizer):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from tokentrim_cli.model import LLAVA_CHAT_TEMPLATE

    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def build_model(tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=PATCH,
        ),
        text_config=LlamaConfig(
            hidden_size=64, intermediate_size=192, num_hidden_layers=32, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,  # 0 is refused by transformers 5.23; -1 uses the whole (3-layer) tower
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )  # fmt: skip
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.max_new_tokens = 16
    return model


# ---- data ----------------------------------------------------------------------------------------


def to_pixels(arrays: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> the processor's normalisation (rescale 1/255, mean 0.5, std 0.5), NCHW float."""
    x = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


class Data:
    def __init__(self, tokenizer, rng: random.Random, drawn_share: float = 0.5, **question_mix: float):
        """`question_mix`: shapes.sample's shares of the drawn questions (shape, yes/no, negated)."""
        import easy_vqa
        from PIL import Image

        self.rng, self.tokenizer, self.drawn_share, self.question_mix = rng, tokenizer, drawn_share, question_mix
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
        ids = sorted(paths)
        self.index = {image_id: i for i, image_id in enumerate(ids)}
        self.pictures = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in ids])
        held_out = set(ids[-HELD_OUT:])
        triples = list(zip(questions, answers, image_ids))
        self.train = [t for t in triples if t[2] not in held_out]
        self.valid = [t for t in triples if t[2] in held_out]
        # Balanced yes/no questions on drawn pictures (own generator): easy-VQA's yes/no answers can
        # mostly be guessed from the wording, these cannot. Its own seed: the training draws stay put.
        drawn = random.Random(VALIDATION_SEED)
        self.valid_yes_no = [shapes.sample(drawn, yes_no_share=1.0) for _ in range(VALIDATION_YES_NO)]
        self.image_token = tokenizer.convert_tokens_to_ids("<image>")
        self.tokens_per_image = (IMAGE_SIZE // PATCH) ** 2
        self._prompts: dict[str, list[int]] = {}

    def prompt_ids(self, question: str) -> list[int]:
        if question not in self._prompts:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                add_generation_prompt=True, tokenize=False,
            )  # fmt: skip
            ids = self.tokenizer(text)["input_ids"]
            if self.tokenizer.unk_token_id in ids:
                raise ValueError(f"out-of-vocabulary words in {question!r}")
            at = ids.index(self.image_token)
            self._prompts[question] = ids[:at] + [self.image_token] * self.tokens_per_image + ids[at + 1 :]
        return self._prompts[question]

    def batch(self, items: list[tuple[np.ndarray, str, str]]):
        """Right-padded input ids, mask, labels (answer and </s> only), pixels, and the targets of
        the auxiliary losses (`auxiliary_targets`, one row per question)."""
        eos = self.tokenizer.eos_token_id
        rows = [(self.prompt_ids(q), self.tokenizer.convert_tokens_to_ids(a)) for _, q, a in items]
        length = max(len(p) for p, _ in rows) + 2
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id)
        labels = torch.full((len(rows), length), -100)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, (prompt, answer) in enumerate(rows):
            n = len(prompt)
            input_ids[r, : n + 2] = torch.tensor(prompt + [answer, eos])
            labels[r, n : n + 2] = torch.tensor([answer, eos])
            mask[r, : n + 2] = 1
        pixels = to_pixels(np.stack([p for p, _, _ in items]))
        return input_ids, mask, labels, pixels, torch.tensor([auxiliary_targets(q, a) for _, q, a in items])

    def training_batch(self, size: int):
        real = [self.rng.choice(self.train) for _ in range(size - round(size * self.drawn_share))]
        items = [(self.pictures[self.index[i]], q, a) for q, a, i in real]
        for _ in range(size - len(items)):
            picture, _, _, q, a = shapes.sample(self.rng, **self.question_mix)
            items.append((np.asarray(picture), q, a))
        return self.batch(items)

    def validation_batches(self, size: int = 100, limit: int = 400):
        for start in range(0, min(limit, len(self.valid)), size):
            part = self.valid[start : start + size]
            yield self.batch([(self.pictures[self.index[i]], q, a) for q, a, i in part])

    def drawn_yes_no_batches(self, size: int = 100):
        for start in range(0, len(self.valid_yes_no), size):
            part = self.valid_yes_no[start : start + size]
            yield self.batch([(np.asarray(picture), q, a) for picture, _, _, q, a in part])


NAMED = (*shapes.SHAPES, *shapes.COLOURS)


def auxiliary_targets(question: str, answer: str) -> tuple[int, int]:
    """(named word, match): the index in NAMED of the one shape or colour `question` names ("is
    there a red shape?": red; -100 if none) and, for yes/no questions, whether the picture shows it
    (1 or 0; -100 for open questions). Negated forms flip the answer, not the match."""
    words = question.replace("?", " ?").split()
    named = [NAMED.index(w) for w in words if w in NAMED]
    word = named[0] if len(named) == 1 else -100
    if answer not in ("yes", "no"):
        return word, -100
    negated = "not" in words or "no" in words
    return word, int((answer == "yes") != negated)


# ---- training ------------------------------------------------------------------------------------


def pretrain_vision(model, steps: int, rng: random.Random, batch_size: int = 64) -> None:
    """Stage 1: shape and colour labels of drawn pictures.

    As written (and as the committed weights were trained), the CLS token learns the shape and the
    mean patch token the colour, each through both halves of `heads` (their losses add). Teaching
    the mean patch the shape too may help the decoder read it, but changes the weights: retrain.
    """
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    norm = torch.nn.LayerNorm(width)
    heads = torch.nn.Linear(width, 2 * (len(shapes.SHAPES) + len(shapes.COLOURS)))
    params = list(tower.parameters()) + list(norm.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    n_shapes, n_labels = len(shapes.SHAPES), len(shapes.SHAPES) + len(shapes.COLOURS)
    started = time.time()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, step / 50) * (0.1 + 0.9 * (1 + math.cos(math.pi * step / steps)) / 2)
        drawn = [shapes.sample(rng) for _ in range(batch_size)]
        pixels = to_pixels(np.stack([np.asarray(p) for p, *_ in drawn]))
        if rng.random() < 0.5:
            pixels = pixels.flip(3)  # a mirrored picture shows the same shape
        shape_labels = torch.tensor([shapes.SHAPES.index(s) for _, s, *_ in drawn])
        colour_labels = torch.tensor([list(shapes.COLOURS).index(c) for _, _, c, *_ in drawn])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tower(pixel_values=pixels)
            patches = norm(out.last_hidden_state[:, 1:].float().mean(1))
            logits = heads(torch.cat([out.pooler_output.float(), patches], 0)).float()
        loss = 0.0
        for half in (logits[:, :n_labels], logits[:, n_labels:]):
            loss = loss + F.cross_entropy(half[:batch_size, :n_shapes], shape_labels)
            loss = loss + F.cross_entropy(half[batch_size:, n_shapes:], colour_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps:
            log(f"vision {step}/{steps} loss {loss.item():.4f} {time.time() - started:.0f}s")


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Per row, the position whose logits predict the answer (the one before the first label)."""
    return (labels != -100).float().argmax(1) - 1


def answer_accuracy(model, batches, yes_no: torch.Tensor) -> tuple[int, int, int, int]:
    """(correct, total, correct on yes/no questions, yes/no questions), teacher-forced."""
    correct = total = yes_no_correct = yes_no_total = 0
    for input_ids, mask, labels, pixels, _ in batches:
        logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits
        answer_at = answer_positions(labels)
        predicted = logits[torch.arange(len(logits)), answer_at].argmax(-1)
        expected = labels[torch.arange(len(labels)), answer_at + 1]
        right, is_yes_no = predicted == expected, torch.isin(expected, yes_no)
        correct, total = correct + right.sum().item(), total + len(labels)
        yes_no_correct, yes_no_total = (
            yes_no_correct + (right & is_yes_no).sum().item(),
            yes_no_total + is_yes_no.sum().item(),
        )
    return correct, total, yes_no_correct, yes_no_total


def validate(model, data: Data) -> dict[str, float]:
    """Held-out accuracy: easy-VQA's (all, yes/no only) and balanced yes/no on drawn pictures."""
    model.eval()
    yes_no = torch.tensor(data.tokenizer.convert_tokens_to_ids(["yes", "no"]))
    with torch.no_grad():
        correct, total, yes_no_correct, yes_no_total = answer_accuracy(model, data.validation_batches(), yes_no)
        drawn_correct, drawn_total, _, _ = answer_accuracy(model, data.drawn_yes_no_batches(), yes_no)
    model.train()
    return {
        "all": correct / total,
        "yes_no": yes_no_correct / yes_no_total,
        "drawn_yes_no": drawn_correct / drawn_total,
    }


def train_answers(
    model, data: Data, steps: int, batch_size: int, lr: float, named_word_weight: float = 0.0,
    match_weight: float = 0.0,
) -> None:  # fmt: skip
    """Stage 2: everything together; the pre-trained tower moves ten times slower.

    Two optional auxiliary losses, on linear heads that are thrown away after training, read the
    hidden state of the position that predicts the answer: `named_word_weight` asks it to hold the
    shape or colour the question names (decoder layers NAMED_WORD_LAYERS), `match_weight` whether
    the picture shows it (layer MATCH_LAYER). Without them the model settles on answering yes/no
    questions from their wording alone: probed, its answer position holds the picture's colour (99%
    linearly decodable) but hardly the colour asked about, and balanced yes/no batches alone did
    not move it (two runs of 250-300 steps, one without negated questions). With both losses,
    the yes/no answers followed once the match was learnt (run 5, from step ~350).
    """
    tower = set(model.model.vision_tower.parameters())
    width = model.config.text_config.hidden_size
    probes = []  # (head, decoder layer, column of the targets, weight)
    if named_word_weight:
        for layer in NAMED_WORD_LAYERS:
            probes.append((torch.nn.Linear(width, len(NAMED)), layer, 0, named_word_weight / len(NAMED_WORD_LAYERS)))
    if match_weight:
        probes.append((torch.nn.Linear(width, 2), MATCH_LAYER, 1, match_weight))
    groups = [
        {"params": [p for p in model.parameters() if p in tower], "scale": 0.1},
        {"params": [p for p in model.parameters() if p not in tower], "scale": 1.0},
        {"params": [p for head, *_ in probes for p in head.parameters()], "scale": 1.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    model.train()
    started = time.time()
    for step in range(1, steps + 1):
        factor = min(1.0, step / 100) * (0.05 + 0.95 * (1 + math.cos(math.pi * step / steps)) / 2)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"] * factor
        input_ids, mask, labels, pixels, targets = data.training_batch(batch_size)
        # fp32: at these widths bf16 autocast spends more on casts than it saves (measured, 2 cores)
        out = model(
            input_ids=input_ids, attention_mask=mask, pixel_values=pixels, labels=labels,
            output_hidden_states=bool(probes),
        )  # fmt: skip
        loss, probe_losses = out.loss, []
        answer_at = answer_positions(labels)
        for head, layer, column, weight in probes:
            hidden = out.hidden_states[layer][torch.arange(len(labels)), answer_at]
            probe_losses.append(F.cross_entropy(head(hidden), targets[:, column], ignore_index=-100))
            loss = loss + weight * probe_losses[-1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0 or step == steps:
            auxiliary = " ".join(f"{value.item():.3f}" for value in probe_losses)
            log(
                f"answers {step}/{steps} loss {out.loss.item():.4f} auxiliary [{auxiliary}] {time.time() - started:.0f}s"
            )
        if step % 100 == 0 or step == steps:
            accuracy = validate(model, data)
            log(f"answers {step}/{steps} held-out teacher-forced accuracy {accuracy['all']:.4f}"
                f" (yes/no {accuracy['yes_no']:.4f}; drawn, balanced yes/no {accuracy['drawn_yes_no']:.4f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--vision-steps", type=int, default=400)
    parser.add_argument("--answer-steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init", type=Path, help="continue from this checkpoint directory (e.g. with --vision-steps 0)"
    )
    parser.add_argument(
        "--drawn-share", type=float, default=0.5, help="share of each batch drawn by shapes.py (the rest: easy-VQA)"
    )
    parser.add_argument("--shape-share", type=float, default=0.5, help="share of drawn questions about the shape")
    parser.add_argument("--yes-no-share", type=float, default=0.5, help="share of drawn questions that are yes/no")
    parser.add_argument("--negated-share", type=float, default=0.5, help="share of drawn yes/no questions negated")
    parser.add_argument(
        "--named-word-weight", type=float, default=0.0, help="weight of the auxiliary named-word loss (0: none)"
    )
    parser.add_argument("--match-weight", type=float, default=0.0, help="weight of the auxiliary match loss (0: none)")
    args = parser.parse_args()

    import easy_vqa
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    questions, _, _ = easy_vqa.get_train_questions()
    words = {w for q in questions for w in q.replace("?", " ?").split()}
    words |= set(easy_vqa.get_answers()) | {"user", "assistant", ":", "?", "."}
    tokenizer = build_tokenizer(sorted(words))
    processor = build_processor(tokenizer)
    if args.init:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32)
    else:
        model = build_model(tokenizer)
    log(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}")
    data = Data(
        tokenizer, rng, args.drawn_share,
        shape_share=args.shape_share, yes_no_share=args.yes_no_share, negated_share=args.negated_share,
    )  # fmt: skip
    started = time.time()
    pretrain_vision(model, args.vision_steps, rng)
    train_answers(model, data, args.answer_steps, args.batch_size, args.lr, args.named_word_weight, args.match_weight)
    minutes = (time.time() - started) / 60

    model.eval().to(torch.bfloat16)
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / "README.md").write_text(MODEL_CARD)
    earlier = [json.loads((args.init / "training.json").read_text())] if args.init else []
    accuracy = validate(model.float(), data)
    (staging / "training.json").write_text(json.dumps({
        "after": earlier,  # the runs this one continued, oldest first
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_minutes": round(minutes, 1),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "held_out_teacher_forced_accuracy": round(accuracy["all"], 4),
        "held_out_teacher_forced_accuracy_yes_no": round(accuracy["yes_no"], 4),
        "held_out_teacher_forced_accuracy_drawn_yes_no": round(accuracy["drawn_yes_no"], 4),
    }, indent=2) + "\n")  # fmt: skip
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    log(f"wrote {args.out} after {minutes:.1f} min of training")


if __name__ == "__main__":
    main()
