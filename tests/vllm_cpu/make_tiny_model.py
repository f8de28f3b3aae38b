"""Write a tiny Qwen3 model directory (config + tokenizer, no weights) for the CPU vLLM tests.

Run it with the CPU vLLM environment's Python (it needs the `tokenizers` package that vLLM
brings): `python make_tiny_model.py OUT_DIR`. vLLM serves it with `--load-format dummy`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Small enough to start in about a minute on 2 cores. head_dim 64 because vLLM's CPU attention
# backend rejects smaller heads (16 fails at start-up).
CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": 0,
    "eos_token_id": 0,
}
VOCAB_SIZE = 512  # tokenizer vocabulary; the model's embedding table is VOCAB_SIZE too
SPECIALS = ["<|endoftext|>"]
TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their can has been if more when will "
    "would who so no time up out about into than them only other new some could these two may "
    "first then do any like my now over such our man me even most made after also did many off"
)
WORDS = TEXT.split()


def _corpus() -> list[str]:
    """A fixed English-like text, so the trained merges are the same on every run."""
    lines = []
    n = len(WORDS)
    for i in range(400):
        lines.append(" ".join(WORDS[(i * 7 + j * 13) % n] for j in range(12)) + f" {i}.")
    return lines


def build_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) trained on the fixed corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def write_model(out: Path) -> None:
    """Write config.json, generation_config.json, tokenizer.json and tokenizer_config.json."""
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    config = dict(CONFIG, vocab_size=VOCAB_SIZE)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 0, "eos_token_id": 0}, indent=2) + "\n"
    )
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": SPECIALS[0],
        "pad_token": SPECIALS[0],
        "model_max_length": CONFIG["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: make_tiny_model.py OUT_DIR", file=sys.stderr)
        return 2
    write_model(Path(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
