"""Reference points for audio tasks: a linear probe on MFCC statistics (no learning of features).

Each clip becomes the per-coefficient mean and standard deviation of its 39-dim MFCCs
(13 coefficients + deltas + delta-deltas), i.e. 78 numbers, and the same logistic-regression
probe as ``mmssl evaluate --protocol linear`` is fitted on them::

    python -m domains.audio.baselines --task kws
"""

from __future__ import annotations

import argparse
import json

import torch

from domains.audio.features import mfcc_with_deltas
from domains.audio.io import AudioClips


def mfcc_statistics(clips: AudioClips) -> torch.Tensor:
    """``[N, 78]``: mean and standard deviation over time of each clip's 39-dim MFCC frames."""
    rows = []
    for wave in clips.waves:
        m = mfcc_with_deltas(wave, clips.sampling_rate)
        rows.append(torch.cat([m.mean(0), m.std(0)]))
    return torch.stack(rows)


def mfcc_probe(train: AudioClips, test: AudioClips) -> dict:
    """Linear-probe accuracy of MFCC statistics (:func:`mmssl.finetune.fit_linear_probe`)."""
    from mmssl.finetune import ProbeConfig, fit_linear_probe

    result = fit_linear_probe((mfcc_statistics(train), train.labels), (mfcc_statistics(test), test.labels), ProbeConfig())
    return {"baseline": "mfcc-statistics", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description="linear probe on MFCC statistics")
    parser.add_argument("--task", default="kws")
    args = parser.parse_args()
    from mmssl.registry import TASKS

    train, test = TASKS.get(args.task)()
    print(json.dumps({"task": args.task, **mfcc_probe(train, test)}))


if __name__ == "__main__":
    main()
