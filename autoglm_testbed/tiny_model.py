"""Generate a tiny REAL causal language model that transformers loads and serves on CPU.

The sandbox cannot download AutoGLM-Phone-9B (20 GB, no hub), so the model stage's hub
stand-in serves this model and the CPU engine (`transformers serve`) answers chat
completions with it. It is a Llama-architecture model (`LlamaForCausalLM`, ~130k random
float32 weights, ~0.5 MB) saved exactly as `save_pretrained` would: `config.json`,
`generation_config.json`, several `model-0000N-of-0000M.safetensors` shards with
`model.safetensors.index.json`, a byte-level BPE `tokenizer.json`, `tokenizer_config.json`
and a ChatML `chat_template.jinja`. The output is gibberish; the formats are real.

Standard library only (the controller needs no torch): safetensors is an 8-byte header
length, a JSON header and raw little-endian tensors. Output is deterministic (fixed seed),
so file hashes are stable and a model lock made from it does not drift.

    python -m autoglm_testbed.tiny_model OUT_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
from pathlib import Path

# Bump when the output changes: callers may key caches on it.
TINY_MODEL_VERSION = "1"
SEED = 1234
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
MAX_POSITIONS = 2048
SHARD_BYTES = 200_000  # several shards + an index, like the real model
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE tokenizers."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def vocabulary() -> dict[str, int]:
    """256 byte tokens then the special tokens."""
    vocab = {ch: i for i, ch in enumerate(_bytes_to_unicode()[b] for b in range(256))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return vocab


def tokenizer_json(vocab: dict[str, int]) -> dict[str, object]:
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": vocab[t],
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def tensor_shapes(vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """LlamaForCausalLM parameter names and shapes, in save order."""
    head_dim = HIDDEN // HEADS
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (vocab_size, HIDDEN))
    ]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HEADS * head_dim, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * head_dim)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (vocab_size, HIDDEN))]
    return shapes


def _tensor_bytes(name: str, shape: tuple[int, ...], rng: random.Random) -> bytes:
    count = 1
    for dim in shape:
        count *= dim
    if name.endswith("norm.weight"):
        values = [1.0] * count  # RMSNorm starts at identity
    else:
        values = [rng.gauss(0.0, 0.02) for _ in range(count)]
    return struct.pack(f"<{count}f", *values)


def safetensors_bytes(tensors: list[tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """One safetensors file: u64 header size, JSON header (padded to 8), tensor data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, data in tensors:
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(d for _, _, d in tensors)


def model_files(seed: int = SEED) -> dict[str, bytes]:
    """Every file of the tiny model: name -> content (another seed: other weights only)."""
    vocab = vocabulary()
    rng = random.Random(seed)
    shards: list[list[tuple[str, tuple[int, ...], bytes]]] = [[]]
    size = 0
    for name, shape in tensor_shapes(len(vocab)):
        data = _tensor_bytes(name, shape, rng)
        if shards[-1] and size + len(data) > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape, data))
        size += len(data)
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for index, shard in enumerate(shards, 1):
        shard_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        files[shard_name] = safetensors_bytes(shard)
        weight_map.update({name: shard_name for name, _, _ in shard})
    total = sum(len(d) for shard in shards for _, _, d in shard)
    ids = {"bos_token_id": vocab["<|bos|>"], "eos_token_id": vocab["<|im_end|>"]}
    ids["pad_token_id"] = vocab["<|pad|>"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        **ids,
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
    }
    generation: dict[str, object] = {**ids, "do_sample": False, "max_new_tokens": 32}
    shard_index = {"metadata": {"total_size": total}, "weight_map": weight_map}

    def as_json(value: object) -> bytes:
        return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()

    files.update(
        {
            "config.json": as_json(config),
            "generation_config.json": as_json(generation),
            "model.safetensors.index.json": as_json(shard_index),
            "tokenizer.json": as_json(tokenizer_json(vocab)),
            "tokenizer_config.json": as_json(tokenizer_config),
            "chat_template.jinja": CHAT_TEMPLATE.encode(),
        }
    )
    return dict(sorted(files.items()))


def write_tiny_model(out: Path, seed: int = SEED) -> dict[str, str]:
    """Write the model into `out` (files 0644, replaced atomically); return name -> sha256."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, content in model_files(seed).items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(content)
        tmp.chmod(0o644)
        tmp.replace(out / name)
        digests[name] = hashlib.sha256(content).hexdigest()
    return digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tiny test model into OUT_DIR.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=SEED, help="weights seed (default %(default)s)")
    args = parser.parse_args(argv)
    print(json.dumps(write_tiny_model(args.out, args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
