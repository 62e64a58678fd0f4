"""A model folder `vllm serve --load-format dummy` and `vllm bench serve` can use on the GPU machine (no network):
DeepSeek-V3's MLA attention dims with dense MLPs (the GPU kit carries no MoE kernels), and a word-level tokenizer
made with the `tokenizers` package (vllm bench serve's random dataset needs one; FINDINGS: bos/eos ids set to the
tokenizer's).

    python3 bench/serve_model.py DIR [--layers 16] [--hidden 7168] [--intermediate 18432]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import e2e  # noqa: E402 - the config of bench/e2e.py's engine runs

VOCAB = 32000  # words w0..w31999 plus the special tokens: random prompts of any length decode to whole words


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--intermediate", type=int, default=18432)
    args = ap.parse_args()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    args.dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(Path(e2e.model_dir(args.layers, args.hidden, args.intermediate), "config.json").read_text())
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(VOCAB)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(args.dir)
    cfg.update(vocab_size=max(cfg["vocab_size"], len(vocab)), bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"])
    (args.dir / "config.json").write_text(json.dumps(cfg))
    print(f"{args.dir}: {args.layers} dense DeepSeek-V3-width layers, word-level tokenizer of {len(vocab)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
