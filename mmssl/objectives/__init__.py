"""The modality-agnostic objective layer and its registry, ``OBJECTIVES``.

One file per registry key (``mlm.py`` ... ``best_rq.py`` for ``best-rq``), each holding its
config dataclass, its :class:`Objective` and its own loss functions; what several objectives
share lives in small modules named for the thing: ``heads.py`` (MLP heads and their published
shapes), ``views.py`` (augmented views, multi-crop encoding), ``memory.py`` (the queues of MoCo, SwAV and
NNCLR), ``losses.py`` (loss pieces), ``units.py`` (checked feature units, block masks on the unit grid),
``checks.py`` (config value checks); the EMA teacher is :mod:`mmssl.teacher`, the gathers
:mod:`mmssl.distributed`.

``OBJECTIVES`` maps a recipe's ``objective.name`` to an :class:`ObjectiveSpec` (the objective
class, its config dataclass, one line of description, the unit kinds it reads and what it needs
beyond units); :func:`objective_spec` looks a name up with an error that lists the known ones.

Adding an objective:

* in mmssl: write ``mmssl/objectives/<key>.py`` (a config dataclass whose ``name`` defaults to
  the key, with defaults that cite the paper; the objective; its loss) and add its line to
  ``OBJECTIVES`` below; ``tests/contracts`` then builds it on a tiny encoder of every unit kind
  it declares, from the real data of a domain that gives them with its needs;
* from another package: add to the dict when that package is imported, e.g. in the module its
  ``mmssl.domains`` entry point names (every recipe imports those before it looks its objective up)::

      from mmssl.objectives import OBJECTIVES, ObjectiveSpec
      OBJECTIVES["my_method"] = ObjectiveSpec(MyMethod, MyMethodConfig, "one line for listings",
                                              units=("grid", "graph"), needs=("views",))
"""

from __future__ import annotations

from mmssl.config import short_repr
from mmssl.objectives.apc import APC, APCConfig
from mmssl.objectives.barlow_twins import BarlowTwins, BarlowTwinsConfig
from mmssl.objectives.base import Objective, ObjectiveSpec, SSLModel
from mmssl.objectives.best_rq import BestRQ, BestRQConfig
from mmssl.objectives.bgrl import BGRL, BGRLConfig
from mmssl.objectives.byol import BYOL, BYOLConfig
from mmssl.objectives.clip import CLIP, ClipConfig
from mmssl.objectives.clm import CausalLM, CausalLMConfig
from mmssl.objectives.data2vec import Data2Vec, Data2VecConfig
from mmssl.objectives.deepcluster import DeepCluster, DeepClusterConfig
from mmssl.objectives.dgi import DGI, DGIConfig
from mmssl.objectives.dino import DINO, DINOConfig
from mmssl.objectives.electra import ELECTRA, ELECTRAConfig
from mmssl.objectives.gpt_gnn import GPTGNN, GPTGNNConfig
from mmssl.objectives.graphmae import GraphMAE, GraphMAEConfig
from mmssl.objectives.hubert import HuBERT, HuBERTConfig
from mmssl.objectives.ibot import IBOT, IBOTConfig
from mmssl.objectives.ijepa import IJEPA, IJEPAConfig
from mmssl.objectives.mae import MAE, MAEConfig
from mmssl.objectives.mlm import MaskedLM, MaskedLMConfig
from mmssl.objectives.moco_v2 import MoCoV2, MoCoV2Config
from mmssl.objectives.moco_v3 import MoCoV3, MoCoV3Config
from mmssl.objectives.msn import MSN, MSNConfig
from mmssl.objectives.nnclr import NNCLR, NNCLRConfig
from mmssl.objectives.pretext import Pretext, PretextConfig
from mmssl.objectives.sigreg import SIGReg, SIGRegConfig
from mmssl.objectives.simclr import SimCLR, SimCLRConfig
from mmssl.objectives.simmim import SimMIM, SimMIMConfig
from mmssl.objectives.simsiam import SimSiam, SimSiamConfig
from mmssl.objectives.swav import SwAV, SwAVConfig
from mmssl.objectives.t5_span import T5SpanCorruption, T5SpanCorruptionConfig
from mmssl.objectives.tera import TERA, TERAConfig
from mmssl.objectives.vicreg import VICReg, VICRegConfig
from mmssl.objectives.wav2vec2 import Wav2Vec2Config, Wav2Vec2Objective

# Each entry: the objective, its config, one line for listings, the unit kinds it reads and what it needs
# beyond units (mmssl.objectives.base.UNIT_KINDS, NEEDS; tests/contracts builds it on every kind it declares),
# and the objective.* settings that shrink it to a seconds-long test run.
_SMALL_HEADS = ("objective.projector_hidden_dim=64", "objective.projector_dim=32")  # published: 2048 to 8192 wide
_VIEWS = ("views",)
# DINO/iBOT heads: published 2048 -> 256 -> 65536 (iBOT 8192) prototypes; batch norm in the head (a setting of both),
# without which a tiny encoder's near-identical outputs first collapse onto one prototype, then centring lifts the loss
_SMALL_DINO_HEADS = (
    "objective.projector_hidden_dim=64",
    "objective.bottleneck_dim=16",
    "objective.projector_dim=32",
    "objective.head_batch_norm=true",
)

OBJECTIVES: dict[str, ObjectiveSpec] = {
    # language modelling over a unit vocabulary
    "mlm": ObjectiveSpec(MaskedLM, MaskedLMConfig, "masked unit prediction (BERT), optional SOP", units=("ids",)),
    "clm": ObjectiveSpec(CausalLM, CausalLMConfig, "next unit prediction (GPT)", units=("ids",), needs=("causal",)),
    "electra": ObjectiveSpec(
        ELECTRA,
        ELECTRAConfig,
        "replaced-token detection on a small MLM generator's samples (ELECTRA)",
        units=("ids",),
        needs=("mlm_generator",),
    ),
    "t5_span_corruption": ObjectiveSpec(
        T5SpanCorruption,
        T5SpanCorruptionConfig,
        "spans replaced by sentinels, decoded by an encoder-decoder (T5 span corruption)",
        units=("ids",),
        needs=("seq2seq",),
    ),
    # joint embeddings of augmented views
    "simclr": ObjectiveSpec(
        SimCLR,
        SimCLRConfig,
        "NT-Xent between augmented views (SimCLR), multi-crop",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=_SMALL_HEADS,
    ),
    "moco_v2": ObjectiveSpec(
        MoCoV2,
        MoCoV2Config,
        "InfoNCE, momentum encoder, key queue (MoCo v2)",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=_SMALL_HEADS,
    ),
    "moco_v3": ObjectiveSpec(
        MoCoV3,
        MoCoV3Config,
        "contrast with predictor and momentum encoder (MoCo v3)",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=(*_SMALL_HEADS, "objective.predictor_hidden_dim=64"),
    ),
    "byol": ObjectiveSpec(
        BYOL,
        BYOLConfig,
        "predict an EMA target's projections (BYOL), multi-crop",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=(*_SMALL_HEADS, "objective.predictor_hidden_dim=64"),
    ),
    "simsiam": ObjectiveSpec(
        SimSiam,
        SimSiamConfig,
        "stop-gradient Siamese prediction (SimSiam)",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=(*_SMALL_HEADS, "objective.predictor_hidden_dim=16"),
    ),
    "barlow_twins": ObjectiveSpec(
        BarlowTwins,
        BarlowTwinsConfig,
        "cross-correlation to identity",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=_SMALL_HEADS,
    ),
    "vicreg": ObjectiveSpec(
        VICReg,
        VICRegConfig,
        "variance-invariance-covariance regularisation (VICReg)",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=_SMALL_HEADS,
    ),
    "swav": ObjectiveSpec(
        SwAV,
        SwAVConfig,
        "swapped prediction of Sinkhorn-Knopp prototype codes (SwAV), multi-crop, queue",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=(*_SMALL_HEADS, "objective.num_prototypes=8"),
    ),
    "nnclr": ObjectiveSpec(
        NNCLR,
        NNCLRConfig,
        "NT-Xent with nearest neighbours from a support queue as positives (NNCLR)",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=(*_SMALL_HEADS, "objective.predictor_hidden_dim=64", "objective.queue_size=32"),
    ),
    # grid only: the image domain's batches carry each sample's index in the data (extras["sample_index"])
    "deepcluster": ObjectiveSpec(
        DeepCluster,
        DeepClusterConfig,
        "k-means pseudo-labels of the whole dataset, recomputed every epoch (DeepCluster-v2), multi-crop",
        units=("grid",),
        needs=(*_VIEWS, "sample_index"),
        smoke_overrides=(*_SMALL_HEADS, "objective.num_prototypes=4"),
    ),
    # any units: the batch's views, or views it masks itself
    "sigreg": ObjectiveSpec(
        SIGReg,
        SIGRegConfig,
        "prediction of the views' centre plus sketched isotropic Gaussian regularisation (LeJEPA's SIGReg)",
        units=("ids", "features", "grid", "graph"),
        smoke_overrides=_SMALL_HEADS,
    ),
    # self-distillation: a student matches a centred, sharpened EMA teacher over prototypes
    "dino": ObjectiveSpec(
        DINO,
        DINOConfig,
        "self-distillation with a centred, sharpened EMA teacher (DINO), multi-crop",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=_SMALL_DINO_HEADS,
    ),
    "ibot": ObjectiveSpec(
        IBOT,
        IBOTConfig,
        "DINO's [CLS] loss plus self-distillation of masked patches (iBOT), multi-crop",
        units=("grid",),
        needs=(*_VIEWS, "mask_token"),
        smoke_overrides=_SMALL_DINO_HEADS,
    ),
    # MSN: published head 2048 -> 256 and 1024 prototypes; encode_visible drops the anchors' patches (a ViT)
    "msn": ObjectiveSpec(
        MSN,
        MSNConfig,
        "masked anchor views match an EMA target's sharpened prototype distribution, me-max (MSN), multi-crop",
        units=("grid",),
        needs=(*_VIEWS, "encode_visible"),
        smoke_overrides=(*_SMALL_HEADS, "objective.num_prototypes=16"),
    ),
    # masked and pretext modelling of units
    "mae": ObjectiveSpec(
        MAE,
        MAEConfig,
        "encode visible units, decode the masked ones (MAE)",
        units=("grid",),
        needs=("encode_visible",),
        smoke_overrides=("objective.decoder_dim=32", "objective.decoder_depth=1", "objective.decoder_heads=2"),
    ),
    "ijepa": ObjectiveSpec(
        IJEPA,
        IJEPAConfig,
        "predict an EMA target encoder's representations of target blocks from a context block (I-JEPA)",
        units=("grid",),
        needs=("encode_visible",),
        smoke_overrides=("objective.predictor_dim=16", "objective.predictor_depth=1", "objective.predictor_heads=2"),
    ),
    "simmim": ObjectiveSpec(
        SimMIM, SimMIMConfig, "regress masked units with a linear head (SimMIM)", units=("features", "grid", "graph")
    ),
    "pretext": ObjectiveSpec(
        Pretext,
        PretextConfig,
        "classify a data transformation (rotation, jigsaw)",
        units=("grid",),
        needs=("pretext_labels",),
    ),
    "data2vec": ObjectiveSpec(
        Data2Vec,
        Data2VecConfig,
        "regress an EMA teacher's averaged top-K layers at masked units (data2vec)",
        units=("ids", "features", "grid", "graph"),
        smoke_overrides=("objective.top_k_layers=2",),
    ),
    # graphs (and any unit grid)
    "dgi": ObjectiveSpec(
        DGI, DGIConfig, "local-global infomax with shuffled units (DGI)", units=("ids", "features", "grid", "graph")
    ),
    # graph only: with no Encoder.unit_decoder (a GNN layer) the per-unit linear decoder reads the re-masked zeros
    # at every masked unit, so no gradient reaches the encoder (tests/contracts)
    "graphmae": ObjectiveSpec(
        GraphMAE,
        GraphMAEConfig,
        "masked unit features, re-masked decoder, scaled cosine error (GraphMAE)",
        units=("graph",),
    ),
    # graph only: it pairs unit t of one view with unit t of the other, which image crops do not keep
    "bgrl": ObjectiveSpec(
        BGRL,
        BGRLConfig,
        "bootstrap unit representations across two views (BGRL)",
        units=("graph",),
        needs=_VIEWS,
        smoke_overrides=("objective.predictor_hidden_dim=64",),
    ),
    "gpt_gnn": ObjectiveSpec(
        GPTGNN,
        GPTGNNConfig,
        "generate masked attributes and removed links (GPT-GNN)",
        units=("graph",),
        needs=("generation",),
        smoke_overrides=("objective.decoder_hidden_dim=64", "objective.queue_size=32"),
    ),
    # speech (and any feature units)
    "wav2vec2": ObjectiveSpec(
        Wav2Vec2Objective,
        Wav2Vec2Config,
        "masked contrastive prediction of quantized features (wav2vec 2.0)",
        units=("features",),
        needs=("quantizer_head",),
        smoke_overrides=("objective.num_negatives=5",),
    ),
    "apc": ObjectiveSpec(
        APC,
        APCConfig,
        "autoregressive predictive coding: L1 on units n steps ahead",
        units=("features",),
        needs=("causal",),
    ),
    "tera": ObjectiveSpec(
        TERA, TERAConfig, "reconstruct time- and channel-altered units (TERA)", units=("features", "grid", "graph")
    ),
    "hubert": ObjectiveSpec(
        HuBERT,
        HuBERTConfig,
        "masked prediction of offline cluster ids (HuBERT)",
        units=("features",),
        needs=("targets",),
    ),
    # not graph: its 20-unit spans do not fit in an ego network's rows, which then mask nothing (a zero loss)
    "best-rq": ObjectiveSpec(
        BestRQ, BestRQConfig, "masked prediction of random-projection codes (BEST-RQ)", units=("features", "grid")
    ),
    # paired modalities
    "clip": ObjectiveSpec(
        CLIP,
        ClipConfig,
        "symmetric InfoNCE between two towers' paired inputs (CLIP)",
        units=("features",),
        needs=("pair",),
        smoke_overrides=("objective.projection_dim=16",),
    ),
}


def objective_spec(name: object) -> ObjectiveSpec:
    """The entry of ``OBJECTIVES`` for a recipe's ``objective.name``.

    Raises:
        KeyError: If no objective has that name; the message lists the known ones.
    """
    if not isinstance(name, str) or name not in OBJECTIVES:
        known = ", ".join(sorted(OBJECTIVES)) or "none registered"
        raise KeyError(f"unknown objective {short_repr(name)}; known: {known}")
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "Objective", "ObjectiveSpec", "SSLModel", "objective_spec"]
