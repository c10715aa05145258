"""Does a masked language model use word order? Its MLM loss on blocks in order vs with each block shuffled.

The same tokens are masked in both passes; in the second, the tokens of each block (masked ones
included) are permuted at random before ``[CLS]``/``[SEP]`` are added, so the model sees the same bag
of words in a meaningless order. A model that reads word order scores far worse on the shuffled
blocks; one that has only learned a bag-of-words predictor (the plateau a small BERT sits on early in
pretraining, just under the unigram entropy) scores the same on both. The unigram cross-entropy of
the masked tokens, with frequencies counted on the evaluated text itself, is printed for scale.

Usage::

    python experiments/mlm_word_order.py runs/bert/export                 # 64 blocks of 126 tokens
    python experiments/mlm_word_order.py runs/bert/export --block 14      # short blocks

Blocks are cut from the end of the embedded Austen corpus (``--corpus`` names another embedded
corpus); they were seen in pretraining, which is fine for this comparison. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn.functional as F


@torch.no_grad()
def masked_loss(model: Any, tokenizer: Any, blocks: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy at the masked positions of ``[CLS] block [SEP]`` inputs."""
    inputs = blocks.masked_fill(mask, tokenizer.mask_token_id)
    n = len(blocks)
    inputs = torch.cat(
        [inputs.new_full((n, 1), tokenizer.cls_token_id), inputs, inputs.new_full((n, 1), tokenizer.sep_token_id)], 1
    )
    logits = model(input_ids=inputs).logits[:, 1:-1][mask].float()
    targets = blocks[mask]
    return F.cross_entropy(logits, targets).item(), (logits.argmax(-1) == targets).float().mean().item()


def word_order_report(
    model: Any, tokenizer: Any, ids: list[int], block: int, n_blocks: int, mask_prob: float = 0.15, seed: int = 0
) -> dict[str, float]:
    """Loss and accuracy of ``model`` on the last ``n_blocks`` blocks of ``ids``, in order and shuffled."""
    if len(ids) < block * n_blocks:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {n_blocks} blocks of {block}")
    tail = ids[len(ids) - block * n_blocks :]
    blocks = torch.tensor(tail).view(n_blocks, block)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(blocks.shape, generator=g) < mask_prob
    perm = torch.stack([torch.randperm(block, generator=g) for _ in range(n_blocks)])
    ordered = masked_loss(model, tokenizer, blocks, mask)
    shuffled = masked_loss(model, tokenizer, blocks.gather(1, perm), mask.gather(1, perm))
    counts = torch.bincount(torch.tensor(tail), minlength=len(tokenizer)).double()
    unigram = -(counts / counts.sum()).log()[blocks[mask]].mean().item()
    return {
        "ordered_loss": ordered[0],
        "ordered_accuracy": ordered[1],
        "shuffled_loss": shuffled[0],
        "shuffled_accuracy": shuffled[1],
        "unigram_loss": unigram,
        "masked_tokens": int(mask.sum()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a BertForMaskedLM folder with its tokenizer (an mmssl export)")
    p.add_argument("--block", type=int, default=126, help="tokens per block, [CLS]/[SEP] excluded (default 126)")
    p.add_argument("--blocks", type=int, default=64, help="number of blocks (default 64)")
    p.add_argument("--corpus", default="austen", help="embedded corpus to cut the blocks from (default austen)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from domains.text.builders import load_embedded_corpus

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForMaskedLM.from_pretrained(args.model).eval()
    texts = load_embedded_corpus(args.corpus)["text"][-4000:]
    ids = [i for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in row]
    report = word_order_report(model, tokenizer, ids, args.block, args.blocks, seed=args.seed)
    print(
        f"masked-token loss on {args.blocks} blocks of {args.block} tokens ({report['masked_tokens']} masked): "
        f"in order {report['ordered_loss']:.3f} (acc {report['ordered_accuracy']:.3f}), "
        f"shuffled {report['shuffled_loss']:.3f} (acc {report['shuffled_accuracy']:.3f}), unigram {report['unigram_loss']:.3f}"
    )
    line = {
        "benchmark": "mlm_word_order",
        "model": args.model,
        "block": args.block,
        "blocks": args.blocks,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()},
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
