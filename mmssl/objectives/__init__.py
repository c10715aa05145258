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
from mmssl.objectives.bigan import BiGAN, BiGANConfig
from mmssl.objectives.byol import BYOL, BYOLConfig
from mmssl.objectives.clip import CLIP, ClipConfig
from mmssl.objectives.clm import CausalLM, CausalLMConfig
from mmssl.objectives.colorization import Colorization, ColorizationConfig
from mmssl.objectives.context_encoder import ContextEncoder, ContextEncoderConfig
from mmssl.objectives.cpc import CPC, CPCConfig
from mmssl.objectives.cpc_v2 import CPCV2, CPCV2Config
from mmssl.objectives.dae import DAE, DAEConfig
from mmssl.objectives.data2vec import Data2Vec, Data2VecConfig
from mmssl.objectives.deepcluster import DeepCluster, DeepClusterConfig
from mmssl.objectives.dgi import DGI, DGIConfig
from mmssl.objectives.dim import DIM, DIMConfig
from mmssl.objectives.dino import DINO, DINOConfig
from mmssl.objectives.electra import ELECTRA, ELECTRAConfig
from mmssl.objectives.gpt_gnn import GPTGNN, GPTGNNConfig
from mmssl.objectives.graphmae import GraphMAE, GraphMAEConfig
from mmssl.objectives.hubert import HuBERT, HuBERTConfig
from mmssl.objectives.ibot import IBOT, IBOTConfig
from mmssl.objectives.ijepa import IJEPA, IJEPAConfig
from mmssl.objectives.imagegpt import ImageGPTObjective, ImageGPTObjectiveConfig
from mmssl.objectives.mae import MAE, MAEConfig
from mmssl.objectives.mlm import MaskedLM, MaskedLMConfig
from mmssl.objectives.moco_v2 import MoCoV2, MoCoV2Config
from mmssl.objectives.moco_v3 import MoCoV3, MoCoV3Config
from mmssl.objectives.msn import MSN, MSNConfig
from mmssl.objectives.nnclr import NNCLR, NNCLRConfig
from mmssl.objectives.pretext import Pretext, PretextConfig
from mmssl.objectives.s4l import S4L, S4LConfig
from mmssl.objectives.sigreg import SIGReg, SIGRegConfig
from mmssl.objectives.simclr import SimCLR, SimCLRConfig
from mmssl.objectives.simmim import SimMIM, SimMIMConfig
from mmssl.objectives.simsiam import SimSiam, SimSiamConfig
from mmssl.objectives.speech_simclr import SpeechSimCLR, SpeechSimCLRConfig
from mmssl.objectives.swav import SwAV, SwAVConfig
from mmssl.objectives.t5_span import T5SpanCorruption, T5SpanCorruptionConfig
from mmssl.objectives.tera import TERA, TERAConfig
from mmssl.objectives.triplet import Triplet, TripletConfig
from mmssl.objectives.vae import VAE, VAEConfig
from mmssl.objectives.vicreg import VICReg, VICRegConfig
from mmssl.objectives.vq_wav2vec import VQWav2Vec, VQWav2VecConfig
from mmssl.objectives.wav2vec2 import Wav2Vec2Config, Wav2Vec2Objective
from mmssl.objectives.word2vec import Word2Vec, Word2VecConfig

# Each entry: the objective, its config, one line for listings, the unit kinds it reads and what it needs
# beyond units (mmssl.objectives.base.UNIT_KINDS, NEEDS; tests/contracts builds it on every kind it declares),
# and the objective.* settings that shrink it to a seconds-long test run.
_SMALL_HEADS = ("objective.projector_hidden_dim=64", "objective.projector_dim=32")  # published: 2048 to 8192 wide
_VIEWS = ("views",)
_FEATURE_MAP = ("feature_map",)  # a convolutional decoder upsamples the encoder's 2-D feature map
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
    # grid only: the image domain's encoder.arch=imagegpt reads its pixel units as palette ids behind a start token
    "imagegpt": ObjectiveSpec(
        ImageGPTObjective,
        ImageGPTObjectiveConfig,
        "next-pixel prediction over a k-means colour palette, from a start token (ImageGPT)",
        units=("grid",),
        needs=("start_token",),
    ),
    # joint embeddings of augmented views
    "simclr": ObjectiveSpec(
        SimCLR,
        SimCLRConfig,
        "NT-Xent between augmented views (SimCLR), multi-crop",
        units=("grid", "graph", "features"),
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
        units=("grid", "graph", "features"),
        needs=_VIEWS,
        smoke_overrides=_SMALL_HEADS,
    ),
    "vicreg": ObjectiveSpec(
        VICReg,
        VICRegConfig,
        "variance-invariance-covariance regularisation (VICReg)",
        units=("grid", "graph", "features"),
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
    "triplet": ObjectiveSpec(
        Triplet,
        TripletConfig,
        "triplet margin loss between views with semi-hard negatives mined in the batch (Exemplar, FaceNet)",
        units=("grid", "graph"),
        needs=_VIEWS,
        smoke_overrides=_SMALL_HEADS,
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
    # the discriminator is the objective's adversary, trained by its own optimizer (mmssl.adversary)
    "bigan": ObjectiveSpec(
        BiGAN,
        BiGANConfig,
        "encoder inverts a generator under a joint discriminator (BiGAN / BigBiGAN)",
        units=("grid",),
        smoke_overrides=(
            "objective.z_dim=8",
            "objective.generator_width=4",
            "objective.discriminator_width=4",
            "objective.discriminator_mlp_width=16",
        ),
    ),
    "pretext": ObjectiveSpec(
        Pretext,
        PretextConfig,
        "classify a data transformation (rotation, jigsaw)",
        units=("grid",),
        needs=("pretext_labels",),
    ),
    # semi-supervised: a classifier on the labelled images plus rotation prediction on every image
    "s4l": ObjectiveSpec(
        S4L,
        S4LConfig,
        "a classifier on a labelled subset + rotation prediction on every image (S4L-Rotation)",
        units=("grid",),
        needs=("pretext_labels", "supervised_labels"),
    ),
    "colorization": ObjectiveSpec(
        Colorization,
        ColorizationConfig,
        "classify the quantised ab colours of each cell from the lightness, class-rebalanced (Zhang et al. 2016)",
        units=("grid",),
        needs=("lightness",),
        smoke_overrides=("objective.decoder_dim=16",),
    ),
    "data2vec": ObjectiveSpec(
        Data2Vec,
        Data2VecConfig,
        "regress an EMA teacher's averaged top-K layers at masked units (data2vec)",
        units=("ids", "features", "grid", "graph"),
        smoke_overrides=("objective.top_k_layers=2",),
    ),
    # image reconstruction through a convolutional pixel decoder from the encoder's 2-D feature map
    "dae": ObjectiveSpec(
        DAE,
        DAEConfig,
        "reconstruct clean images from corrupted ones (denoising autoencoder)",
        units=("grid",),
        needs=_FEATURE_MAP,
        smoke_overrides=("objective.decoder_width=8", "objective.decoder_depth=1"),
    ),
    "vae": ObjectiveSpec(
        VAE,
        VAEConfig,
        "Gaussian posterior, reparameterised samples decoded to images, ELBO (variational autoencoder)",
        units=("grid",),
        needs=_FEATURE_MAP,
        smoke_overrides=("objective.decoder_width=8", "objective.decoder_depth=1", "objective.latent_dim=4"),
    ),
    "context_encoder": ObjectiveSpec(
        ContextEncoder,
        ContextEncoderConfig,
        "inpaint a dropped region from its context, L2 + adversarial (context encoder)",
        units=("grid",),
        needs=_FEATURE_MAP,
        smoke_overrides=("objective.decoder_width=8", "objective.decoder_depth=1", "objective.discriminator_width=4"),
    ),
    # graphs (and any unit grid)
    "dgi": ObjectiveSpec(
        DGI, DGIConfig, "local-global infomax with shuffled units (DGI)", units=("ids", "features", "grid", "graph")
    ),
    "dim": ObjectiveSpec(
        DIM,
        DIMConfig,
        "local and global infomax between feature map and summary, batch negatives (Deep InfoMax)",
        units=("grid", "graph"),
        smoke_overrides=("objective.mi_units=32",),
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
    # contrastive predictive coding: the encoder is the causal context network (CPC probes c_t); vq-wav2vec quantises
    # its frames when the encoder has a quantizer (the audio domain's encoder.arch=cpc, encoder.cpc_quantizer=gumbel)
    "cpc": ObjectiveSpec(
        CPC,
        CPCConfig,
        "InfoNCE of a causal context's predictions of local features k = 1..K steps ahead (CPC)",
        units=("features",),
        needs=("causal",),
        smoke_overrides=("objective.num_negatives=16",),
    ),
    "vq_wav2vec": ObjectiveSpec(
        VQWav2Vec,
        VQWav2VecConfig,
        "wav2vec's future prediction on Gumbel-quantised frames, annealed temperature (vq-wav2vec)",
        units=("features",),
        needs=("causal",),
    ),
    # Speech SimCLR: SimCLR's NT-Xent on the audio domain's augmented views plus reconstruction of the clean units
    "speech_simclr": ObjectiveSpec(
        SpeechSimCLR,
        SpeechSimCLRConfig,
        "NT-Xent between augmented views of an utterance plus clean-feature reconstruction (Speech SimCLR)",
        units=("features",),
        needs=_VIEWS,
        smoke_overrides=_SMALL_HEADS,
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
    # CPC v2: crops of the unit grid encoded alone, a masked-conv context over the crop grid owned by the objective
    "cpc_v2": ObjectiveSpec(
        CPCV2,
        CPCV2Config,
        "InfoNCE of crop rows below from a masked-conv context over independently encoded crops (CPC v2)",
        units=("grid",),
        smoke_overrides=("objective.num_negatives=8", "objective.context_layers=2"),
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
    # word vectors: an embedding table and the corpus counts of its units (the text domain's encoder.arch=word2vec).
    # Contract: output vectors start uniform, not at word2vec.c's zeros, under which the first step's gradient
    # reaches only them (the input vectors' gradient is a sum of output vectors)
    "word2vec": ObjectiveSpec(
        Word2Vec,
        Word2VecConfig,
        "skip-gram / CBOW with negative sampling and subsampling (word2vec)",
        units=("ids",),
        needs=("unit_counts",),
        smoke_overrides=("objective.output_init=uniform",),
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
