"""Build the tiny models the tests (and the offline demo) run on.

No model can be downloaded on the machines this project is tested on, so the repository makes
its own: a byte-level BPE tokenizer with a chat template, a small Llama-architecture *target*
model (head_dim 64, which vLLM's CPU attention supports) and a smaller *draft* model with the
same tokenizer. Both are trained briefly with MLX on a generated chat corpus so that their
next-token distributions are peaked: greedy answers are stable text, which makes speculative
decoding, fine-tuning and quantization checks meaningful.

The folders are in the Hugging Face layout, so mlx-lm and vLLM load the very same files.
Everything is seeded; the result is cached under a key that hashes this file, so a change
here rebuilds and an unchanged checkout reuses.

    python -m scripts.testmodels            # build (or reuse) and print the folders
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "test-models"

BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [BOS, IM_START, IM_END]
VOCAB_SIZE = 512

# ChatML, as Qwen and many small models use it. A partial assistant answer is continued by
# rendering with add_generation_prompt=True and appending the partial text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape and training budget of one test model."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    train_steps: int
    learning_rate: float
    seed: int
    max_position_embeddings: int = 4096
    batch_size: int = 32

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


TARGET = ModelSpec(
    name="target",
    hidden_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=384,
    train_steps=650,
    learning_rate=3e-3,
    seed=1,
)
DRAFT = ModelSpec(
    name="draft",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=1,
    num_key_value_heads=1,
    intermediate_size=192,
    train_steps=500,
    learning_rate=1e-2,
    seed=2,
)


@dataclass(frozen=True, slots=True)
class ModelSet:
    """Where the built models live."""

    target: Path
    draft: Path
    corpus: Path  # the training conversations, one JSON object per line
    heldout: Path  # plain text the models never saw, for perplexity checks


# --- the corpus -----------------------------------------------------------------------------

COUNTRIES = [
    ("France", "Paris"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
]
ANIMALS = [
    ("cat", "meows"),
    ("dog", "barks"),
    ("cow", "moos"),
    ("duck", "quacks"),
    ("lion", "roars"),
    ("sheep", "bleats"),
    ("owl", "hoots"),
    ("horse", "neighs"),
]
COLORS = [
    ("sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("coal", "black"),
    ("sun", "yellow"),
    ("blood", "red"),
]
# Memorised paragraphs give long, fully determined answers: good for decode-speed benchmarks
# and for speculative decoding, where the draft should agree with the target.
STORIES = {
    "the river": (
        "The river starts high in the hills, where snow melts in the spring. It runs past "
        "the old mill and the stone bridge, through the green valley and the quiet town, "
        "and at last it reaches the sea. Fish swim in it, birds drink from it, and children "
        "play on its banks in the long days of summer."
    ),
    "the lighthouse": (
        "The lighthouse stands on a rock at the edge of the bay. Every night its lamp turns "
        "and sends a beam across the water, so that ships can find the harbour in the dark. "
        "The keeper climbs the stairs at dusk, cleans the glass, and watches the sea until "
        "the morning comes."
    ),
    "the garden": (
        "In the garden there are roses by the wall, beans on tall poles, and an apple tree "
        "in the corner. Bees move from flower to flower, and a small path of stones leads "
        "to a bench in the shade, where you can sit and read a book in the afternoon."
    ),
}
HELDOUT_TEXT = (
    "The capital of Norway is Oslo. The dog barks and the owl hoots. The garden has roses by "
    "the wall and an apple tree in the corner. The river runs past the old mill to the sea. "
    "The lighthouse sends a beam across the water every night. The colour of the sky is blue."
)


def _number_words(n: int) -> str:
    return str(n)


def corpus_conversations(seed: int = 0, count: int = 2400) -> list[list[dict[str, str]]]:
    """Templated chat Q&A: facts, simple sums and memorised paragraphs."""
    rng = random.Random(seed)
    systems = ["", "", "", "You are a helpful assistant.", "Answer briefly."]
    out: list[list[dict[str, str]]] = []
    for _ in range(count):
        kind = rng.choice(["capital", "capital", "animal", "color", "sum", "story", "greet"])
        if kind == "capital":
            country, city = rng.choice(COUNTRIES)
            q = rng.choice(
                [f"What is the capital of {country}?", f"Which city is the capital of {country}?"]
            )
            a = f"The capital of {country} is {city}."
        elif kind == "animal":
            animal, sound = rng.choice(ANIMALS)
            q = f"What sound does a {animal} make?"
            a = f"A {animal} {sound}."
        elif kind == "color":
            thing, color = rng.choice(COLORS)
            q = f"What color is the {thing}?"
            a = f"The {thing} is {color}."
        elif kind == "sum":
            x, y = rng.randint(1, 9), rng.randint(1, 9)
            q = f"What is {x} plus {y}?"
            a = f"{x} plus {y} is {_number_words(x + y)}."
        elif kind == "story":
            topic = rng.choice(sorted(STORIES))
            q = rng.choice([f"Tell me about {topic}.", f"Describe {topic}."])
            a = STORIES[topic]
        else:
            q = rng.choice(["Hello!", "Hi there.", "Good morning!"])
            a = "Hello! How can I help you today?"
        messages: list[dict[str, str]] = []
        system = rng.choice(systems)
        if system:
            messages.append({"role": "system", "content": system})
        # Some conversations carry an earlier turn, so the models see multi-turn histories.
        if rng.random() < 0.3:
            country, city = rng.choice(COUNTRIES)
            messages.append({"role": "user", "content": f"What is the capital of {country}?"})
            messages.append(
                {"role": "assistant", "content": f"The capital of {country} is {city}."}
            )
        messages.append({"role": "user", "content": q})
        messages.append({"role": "assistant", "content": a})
        out.append(messages)
    return out


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template, in Python (used for training text; must match CHAT_TEMPLATE)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


# --- building -------------------------------------------------------------------------------


def _cache_key() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(json.dumps([asdict(TARGET), asdict(DRAFT)]).encode())
    return digest.hexdigest()[:12]


def _train_tokenizer(texts: list[str], folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": IM_END,
        "pad_token": BOS,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": TARGET.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": IM_END, "pad_token": BOS}, indent=2)
    )


def _hf_config(spec: ModelSpec, vocab_size: int, bos_id: int, eos_id: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab_size,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": bos_id,
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def _train_model(
    spec: ModelSpec,
    folder: Path,
    token_rows: list[list[int]],
    vocab_size: int,
    bos_id: int,
    eos_id: int,
) -> None:
    # Trained with torch: on this CPU it runs the same Llama several times faster than MLX's
    # CPU build, and transformers writes the Hugging Face layout that both engines load.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = _hf_config(spec, vocab_size, bos_id, eos_id)
    model = LlamaForCausalLM(LlamaConfig(**config)).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.train_steps, pct_start=0.1
    )
    rng = random.Random(spec.seed)
    # Bucket by length so that batches carry little padding.
    order = sorted(range(len(token_rows)), key=lambda i: len(token_rows[i]))
    batches = [order[i : i + spec.batch_size] for i in range(0, len(order), spec.batch_size)]
    model.train()
    losses: list[float] = []
    for _ in range(spec.train_steps):
        rows = [token_rows[i] for i in batches[rng.randrange(len(batches))]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [bos_id] * (width - len(r)) for r in rows])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.save_pretrained(folder, safe_serialization=True)
    # save_pretrained writes the dtype under one key or the other depending on the version.
    saved = json.loads((folder / "config.json").read_text())
    saved.update({"torch_dtype": "float32", "dtype": "float32"})
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}, indent=2)
    )
    tail = losses[-20:]
    (folder / "training.json").write_text(
        json.dumps({"spec": asdict(spec), "final_train_loss": sum(tail) / len(tail)}, indent=2)
    )


def _build(folder: Path) -> None:
    from tokenizers import Tokenizer

    conversations = corpus_conversations()
    texts = [render_chat(c) for c in conversations]
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    _train_tokenizer([*texts, HELDOUT_TEXT], tok_dir)
    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    bos_id = tokenizer.token_to_id(BOS)
    eos_id = tokenizer.token_to_id(IM_END)
    vocab_size = tokenizer.get_vocab_size()
    token_rows = [tokenizer.encode(t).ids for t in texts]

    with (folder / "corpus.jsonl").open("w") as f:
        for c in conversations:
            f.write(json.dumps({"messages": c}) + "\n")
    (folder / "heldout.txt").write_text(HELDOUT_TEXT + "\n")

    for spec in (TARGET, DRAFT):
        model_dir = folder / spec.name
        model_dir.mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (model_dir / name).write_bytes((tok_dir / name).read_bytes())
        _train_model(spec, model_dir, token_rows, vocab_size, bos_id, eos_id)


def build(cache_dir: Path | None = None) -> ModelSet:
    """Return the test models, building them first if this version is not cached yet."""
    root = Path(os.environ.get("TANDEM_TEST_MODELS", cache_dir or DEFAULT_CACHE))
    folder = root / _cache_key()
    done = folder / ".complete"
    if not done.exists():
        # Build in a scratch folder and rename, so a killed build never looks complete and
        # two processes building at once do not read each other's half-written files.
        scratch = root / f".building-{os.getpid()}"
        if scratch.exists():
            import shutil

            shutil.rmtree(scratch)
        _build(scratch)
        (scratch / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            scratch.rename(folder)
        except OSError:
            import shutil

            shutil.rmtree(scratch)  # another process won the race; its copy is identical
    return ModelSet(
        target=folder / "target",
        draft=folder / "draft",
        corpus=folder / "corpus.jsonl",
        heldout=folder / "heldout.txt",
    )


if __name__ == "__main__":
    started = time.perf_counter()
    models = build()
    print(json.dumps({k: str(v) for k, v in asdict(models).items()}))
    print(f"ready in {time.perf_counter() - started:.1f}s", file=sys.stderr)
