"""The raw-feature baseline of audio tasks: a linear probe on MFCC statistics (no learning of features).

Each clip becomes the per-coefficient mean and standard deviation of its 39-dim MFCCs
(13 coefficients + deltas + delta-deltas), i.e. 78 numbers (``mfcc-statistics``), and
``mmssl evaluate RUN --protocol linear|knn --task TASK --init raw`` fits the same probe on them as on
an encoder's pooled features (:meth:`domains.audio.domain.AudioDomain.raw_features`). Without a run::

    python -m domains.audio.baselines --task kws
"""

from __future__ import annotations

import argparse
import json

import torch

from domains.audio.data import ClipRows
from domains.audio.features import mfcc_with_deltas
from domains.audio.io import AudioClips
from mmssl.domain import RawFeatures


def mfcc_statistics(clips: AudioClips, max_samples: int | None = None) -> torch.Tensor:
    """``[N, 78]``: mean and standard deviation over time of each clip's 39-dim MFCC frames.

    ``max_samples`` reads only the first samples of each clip, as a task's rows do (:class:`ClipRows`).
    """
    rows = []
    for wave in clips.waves:
        m = mfcc_with_deltas(wave[:max_samples], clips.sampling_rate)
        rows.append(torch.cat([m.mean(0), m.std(0)]))
    return torch.stack(rows)


def mfcc_baseline(train: ClipRows, test: ClipRows) -> RawFeatures:
    """The ``mfcc-statistics`` baseline of a labelled task's rows (each clip as long as the encoder reads it)."""
    return RawFeatures(
        "mfcc-statistics",
        *(
            (mfcc_statistics(rows.clips, rows.max_samples), torch.tensor(rows.clips.labels, dtype=torch.long))
            for rows in (train, test)
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="linear probe on MFCC statistics")
    parser.add_argument("--task", default="kws")
    args = parser.parse_args()
    from mmssl.probes import fit_linear_probe
    from mmssl.registry import DOMAINS
    from mmssl.tasks import ProbeConfig, TaskConfig

    task, domain = TaskConfig(name=args.task), DOMAINS.get("audio")
    raw = domain.raw_features(domain.task_data(task), task)
    print(json.dumps({"task": args.task, "baseline": raw.name, **fit_linear_probe(raw.train, raw.test, ProbeConfig())}))


if __name__ == "__main__":
    main()
