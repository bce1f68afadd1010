#!/usr/bin/env python3
"""Token-id fixture for the CLIP tokenizer of Stable Diffusion pipelines (issue 13, point 2).

Builds a `tokenizer/` folder as the SD 1.x and SD 2.x diffusers pipelines ship it from the real
CLIP BPE vocabulary (OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`, which `open_clip_torch` ships
on PyPI), checks that transformers' CLIPTokenizer loads it, and writes the ids and attention masks
that the pipeline call `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)`
gives for a set of prompts under both configs (SD 1 pads with `<|endoftext|>`, SD 2 with `!`).

Writes to tests/data/sd/:
  clip_vocab/vocab.json.gz, clip_vocab/merges.txt.gz   the vocabulary, once, compressed
  tokenizer_sd1/, tokenizer_sd2/                       tokenizer_config.json + special_tokens_map.json
  tokenizer_fixture.json                               prompts, ids, masks

Reference: transformers 4.x's Python `CLIPTokenizer` (the class diffusers instantiates from
`model_index.json`), run without `ftfy` installed — its BasicTokenizer cleanup is what the Rust
port reproduces. transformers 5 dropped that class (its CLIPTokenizer is the `tokenizers` one);
the fast tokenizer's ids are recorded beside it (`fast_ids`) and the prompts where the two
disagree are listed, so the difference is documented rather than hidden.

Needs: transformers>=4.50,<5 (and its tokenizers), no ftfy. The vocabulary file comes from the
open_clip_torch wheel:
    pip download --no-deps open_clip_torch -d /tmp/oc && cd /tmp/oc && unzip -o *.whl 'open_clip/*.gz'
    python tools/sd/make_tokenizer_fixture.py --bpe /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "tests", "data", "sd")

# The special tokens as the SD folders on the Hugging Face hub write them
# (CompVis/stable-diffusion-v1-4 and stabilityai/stable-diffusion-2-1, tokenizer/).
def added(content):
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def tokenizer_config(pad):
    typed = lambda c: {"__type": "AddedToken", **added(c)}
    return {
        "add_prefix_space": False,
        "bos_token": typed("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": typed("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": typed("<|endoftext|>"),
    }


def special_tokens_map(pad):
    return {
        "bos_token": added("<|startoftext|>"),
        "eos_token": added("<|endoftext|>"),
        "pad_token": pad,
        "unk_token": added("<|endoftext|>"),
    }


CONFIGS = {"sd1": "<|endoftext|>", "sd2": "!"}

LONG = (
    "a highly detailed chest x-ray of a 54 year old patient, posteroanterior view, "
    "with a small left pleural effusion, mild cardiomegaly, no pneumothorax, sternotomy wires, "
    "a central venous catheter with its tip in the superior vena cava, degenerative changes of "
    "the thoracic spine, and a healed fracture of the right seventh rib, photographed in 4k"
)

PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT",
    "chest x-ray, PA view: no acute findings.",
    "Hello, world!",
    "wow!!! really?!",
    "!",
    "a cat!dog",
    "it's a dog's life; they're here, we've seen, I'm sure, you'll go, he'd say",
    "don't 'quote' \"double\" `tick`",
    "IT'S LOUD",
    "numbers 12345 and 3.14159 and 1,000,000",
    "covid-19 t2-weighted mri 3T",
    "   leading and trailing spaces   ",
    "multiple     spaces\tand\ttabs",
    "line one\nline two\r\nline three",
    "café naïve résumé façade",
    "Cafe\u0301 (combining accent)",
    "ÀÉÎÕÜ ÇÑ",
    "Straße groß",
    "ΟΔΟΣ σοφία",
    "привет мир",
    "猫が好きです",
    "中文测试 mixed with english",
    "한국어 텍스트",
    "emoji 🐱🐶 and ❤️ and 👩‍⚕️",
    "zero\u200bwidth and nbsp\u00a0here",
    "control\x07char and \x00 nul",
    "arrows → ← and math ∑∫√ and © ® ™",
    "<|startoftext|>",
    "<|endoftext|>",
    "a <|endoftext|> b",
    "<|STARTOFTEXT|> upper",
    "x<|startoftext|>y<|endoftext|>z",
    "snake_case and camelCase and kebab-case",
    "email@example.com https://example.org/path?q=1",
    "$100 50% #hashtag @user &amp;",
    "...---...",
    LONG,
    " ".join(["word"] * 80),
    "! " * 40,
]


def build_vocab(bpe_path):
    """The vocabulary exactly as OpenAI CLIP's SimpleTokenizer (and the HF conversion) builds it."""
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    assert len(merges) == 48894 and all(len(m) == 2 for m in merges), "unexpected bpe file"

    # GPT-2's byte table, in the order CLIP uses for the first 256 ids.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    assert len(encoder) == 49408
    return encoder, merges


def write_folder(folder, encoder, merges, pad):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    write_configs(folder, pad)


def write_configs(folder, pad):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(pad), f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special_tokens_map(pad), f, indent=2)
        f.write("\n")


def gzip_file(src, dst):
    # mtime=0: the same vocabulary gives the same bytes, so reruns do not churn git.
    with open(src, "rb") as fi, open(dst, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as fo:
            shutil.copyfileobj(fi, fo)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bpe", help="bpe_simple_vocab_16e6.txt.gz (default: from an installed open_clip)")
    args = ap.parse_args()

    if importlib.util.find_spec("ftfy") is not None:
        sys.exit("ftfy is installed: CLIPTokenizer would use it instead of BasicTokenizer; run without ftfy")
    import transformers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    if not transformers.__version__.startswith("4."):
        sys.exit(f"transformers {transformers.__version__}: the Python CLIPTokenizer is in 4.x only")

    bpe = args.bpe
    if bpe is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None:
            sys.exit("no --bpe and no open_clip installed")
        bpe = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
    encoder, merges = build_vocab(bpe)

    fixture = {
        "reference": f"transformers {transformers.__version__} CLIPTokenizer (Python, no ftfy), "
        "tokenizer(prompt, padding='max_length', max_length=model_max_length, truncation=True)",
        "prompts": PROMPTS,
        "configs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, pad in CONFIGS.items():
            folder = os.path.join(tmp, name)
            write_folder(folder, encoder, merges, pad)
            slow = CLIPTokenizer.from_pretrained(folder)
            fast = CLIPTokenizerFast.from_pretrained(folder, from_slow=True)
            assert slow.fix_text is None, "CLIPTokenizer picked up ftfy"
            assert len(slow.encoder) == 49408 and len(slow.bpe_ranks) == 48894
            assert slow.model_max_length == 77
            assert slow.pad_token == pad, (slow.pad_token, pad)
            n = slow.model_max_length
            cases, disagree = [], []
            for p in PROMPTS:
                s = slow(p, padding="max_length", max_length=n, truncation=True)
                f = fast(p, padding="max_length", max_length=n, truncation=True)
                case = {"ids": s["input_ids"], "mask": s["attention_mask"], "tokens": slow.tokenize(p)}
                if f["input_ids"] != s["input_ids"] or f["attention_mask"] != s["attention_mask"]:
                    case["fast_ids"] = f["input_ids"]
                    disagree.append(p)
                cases.append(case)
            fixture["configs"][name] = {
                "pad_token": pad,
                "pad_token_id": slow.pad_token_id,
                "bos_token_id": slow.bos_token_id,
                "eos_token_id": slow.eos_token_id,
                "model_max_length": n,
                "cases": cases,
                "fast_disagrees_on": disagree,
            }
            print(f"{name}: pad {pad!r} id {slow.pad_token_id}; fast tokenizer disagrees on {len(disagree)} prompts:")
            for p in disagree:
                print(f"   {p!r}")

        os.makedirs(os.path.join(OUT, "clip_vocab"), exist_ok=True)
        for fname in ("vocab.json", "merges.txt"):
            gzip_file(os.path.join(tmp, "sd1", fname), os.path.join(OUT, "clip_vocab", fname + ".gz"))
    for name, pad in CONFIGS.items():
        write_configs(os.path.join(OUT, f"tokenizer_{name}"), pad)

    with open(os.path.join(OUT, "tokenizer_fixture.json"), "w", encoding="utf-8") as f:
        # One case per line keeps the file small and its diffs readable.
        f.write("{\n")
        f.write(f' "reference": {json.dumps(fixture["reference"])},\n')
        f.write(f' "prompts": {json.dumps(PROMPTS, ensure_ascii=False)},\n')
        f.write(' "configs": {\n')
        names = list(fixture["configs"])
        for k, name in enumerate(names):
            c = fixture["configs"][name]
            head = {key: v for key, v in c.items() if key != "cases"}
            f.write(f'  {json.dumps(name)}: {{\n')
            for key, v in head.items():
                f.write(f"   {json.dumps(key)}: {json.dumps(v, ensure_ascii=False)},\n")
            f.write('   "cases": [\n')
            for i, case in enumerate(c["cases"]):
                sep = "," if i + 1 < len(c["cases"]) else ""
                f.write(f"    {json.dumps(case, ensure_ascii=False)}{sep}\n")
            f.write("   ]\n")
            f.write("  }" + ("," if k + 1 < len(names) else "") + "\n")
        f.write(" }\n}\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
