"""The frozen, validated configuration of a meta-learner.

Field names are the names of the training app's flags, so that one name
means one concept from the command line to the graph. Named variants
(`maml`, `first_order_maml`, `mamlpp`) are functions below.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers

log = logging.getLogger(__name__)

# Antoniou et al. (2019), Sec. 4 and the authors' code: the values of the
# MAML++ experiments.
DEFAULT_INNER_LR = 0.1
DEFAULT_META_LR = 1e-3
# PyTorch's BatchNorm2d defaults, which the authors' MetaBatchNormLayer uses.
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5

BN_MODES = ("transductive", "per_step_running")
DOWNSAMPLING_MODES = ("max_pool", "strided")
# conv4: the paper's 4-stage conv net (num_filters, num_stages,
# downsampling); resnet12: `resnet.py` (resnet_widths); custom: one's own,
# passed to `MetaLearner(backbone=...)`.
BACKBONES = ("conv4", "resnet12", "custom")
# The few-shot ResNet-12's widths (Oreshkin et al. 2018; Lee et al. 2019).
RESNET12_WIDTHS = (64, 160, 320, 640)
DTYPES = ("float32", "float64")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetaLearnerConfig:
    """Every hyperparameter of the model and of one meta-learning step.

    Attributes:
      num_ways: classes per task (N).
      num_shots: support examples per class (K).
      num_queries: query examples per class.
      meta_batch_size: tasks per meta-iteration.
      image_shape: (H, W, C) of one input image.
      backbone: the network: "conv4" (the paper's, shaped by num_filters,
        num_stages, downsampling), "resnet12" (shaped by resnet_widths),
        or "custom": one's own, named by `custom_backbone` or passed as
        `MetaLearner(backbone=...)` (the fields of the built-in ones are
        then unused).
      custom_backbone: with backbone "custom", "module:function", an
        importable constructor `function(config) -> model` (see
        `MetaLearner`); saved in config.json, so the apps rebuild the
        network. None: pass the network as `MetaLearner(backbone=...)`.
      resnet_widths: channels of each ResNet-12 block, one block each.
      num_filters: channels of every conv stage (64 Omniglot, 48 mini-ImageNet).
      num_stages: conv -> BN -> LeakyReLU -> downsample stages (4 in the paper).
      downsampling: "max_pool" (2x2, stride 2 after a stride-1 conv, the
        authors' model) or "strided" (stride-2 convs, then global average
        pooling before the classifier).
      num_inner_steps: inner SGD steps in training (N in the MSL formula).
      num_eval_inner_steps: inner SGD steps at evaluation. More than
        `num_inner_steps` reuses the last trained BN slot and LSLR rate.
      inner_lr_init: initial (LSLR) or fixed inner learning rate.
      learn_inner_lr: LSLR, learned per-layer, per-step inner rates.
      multi_step_loss: MSL, the weighted sum of per-step query losses.
      msl_epochs: epochs over which MSL anneals; afterwards final-step loss
        only. Longer than `total_epochs` is allowed (MSL then never anneals
        out) and logged as a WARNING by `warn_if_msl_outlasts_the_run`.
      second_order: differentiate through the inner gradients at all.
      first_order_to_second_order_epoch: DA; the last first-order epoch:
        first order while `epoch <= this` (the authors' convention), so E
        gives E + 1 first-order epochs (0..E), 49 the paper's first 50, and
        -1 second order from epoch 0. With `second_order` on it must be
        below `total_epochs - 1`, so that the run reaches the switch.
        Ignored when `second_order` is False.
      per_step_bn_statistics: BNRS, one running-statistics slot per step.
      per_step_bn_weights: BNWB, one gamma/beta slot per step.
      adapt_bn_in_inner_loop: also adapt BN gamma/beta in the inner loop.
      bn_mode: "transductive" (batch statistics always, the authors' code)
        or "per_step_running" (running statistics at evaluation).
      bn_momentum: running-statistics momentum (PyTorch convention).
      bn_epsilon: BN variance epsilon.
      cosine_annealing: CA, cosine decay of the meta lr per epoch.
      meta_lr: Adam's learning rate (the start of CA).
      min_meta_lr: the end of CA at `total_epochs`.
      total_epochs: length of training, the CA period.
      adam_beta1, adam_beta2: Adam's moment decay rates.
      meta_grad_clip: element-wise clip of the network's meta-gradients to
        [-v, v] (the authors use 10 for mini-ImageNet); None disables.
      max_nonfinite_steps: consecutive skipped non-finite meta-steps after
        which training stops with an error.
      dtype: "float32", or "float64" for finite-difference checks.
    """

    num_ways: int = 5
    num_shots: int = 1
    num_queries: int = 1
    meta_batch_size: int = 8
    image_shape: tuple[int, int, int] = (28, 28, 1)
    backbone: str = "conv4"
    resnet_widths: tuple[int, ...] = RESNET12_WIDTHS
    custom_backbone: str | None = None
    num_filters: int = 64
    num_stages: int = 4
    downsampling: str = "max_pool"
    num_inner_steps: int = 5
    num_eval_inner_steps: int = 5
    inner_lr_init: float = DEFAULT_INNER_LR
    learn_inner_lr: bool = True
    multi_step_loss: bool = True
    msl_epochs: int = 10
    second_order: bool = True
    first_order_to_second_order_epoch: int = -1
    per_step_bn_statistics: bool = True
    per_step_bn_weights: bool = True
    adapt_bn_in_inner_loop: bool = False
    bn_mode: str = "transductive"
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON
    cosine_annealing: bool = True
    meta_lr: float = DEFAULT_META_LR
    min_meta_lr: float = 1e-5
    total_epochs: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    meta_grad_clip: float | None = None
    max_nonfinite_steps: int = 10
    dtype: str = "float32"

    def __post_init__(self):
        # Lists arrive from JSON; the config must stay hashable and frozen.
        _require(
            all(
                isinstance(d, numbers.Integral) and not isinstance(d, bool)
                for d in self.image_shape
            ),
            f"image_shape must hold ints (H, W, C), got {self.image_shape!r}.",
        )
        _require(
            len(self.resnet_widths) >= 1 and all(
                isinstance(d, numbers.Integral) and not isinstance(d, bool)
                and d >= 1 for d in self.resnet_widths
            ),
            f"resnet_widths must be one or more ints >= 1 (channels per "
            f"block), got {self.resnet_widths!r}.",
        )
        # Python ints: numpy ones (from array shapes) break to_json.
        object.__setattr__(
            self, "image_shape", tuple(int(d) for d in self.image_shape)
        )
        object.__setattr__(
            self, "resnet_widths", tuple(int(d) for d in self.resnet_widths)
        )
        for name in (
            "num_ways",
            "num_shots",
            "num_queries",
            "meta_batch_size",
            "num_filters",
            "num_stages",
            "num_inner_steps",
            "num_eval_inner_steps",
            "msl_epochs",
            "total_epochs",
            "max_nonfinite_steps",
        ):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool),
                f"{name} must be an int, got {value!r} "
                f"({type(value).__name__}).",
            )
            _require(
                value >= 1,
                f"{name} must be >= 1, got {value}. Set --{name} to a "
                "positive count.",
            )
        _require(
            self.num_ways >= 2,
            f"num_ways must be >= 2 for a classification task, got "
            f"{self.num_ways}. Set --num_ways to 2 or more.",
        )
        _require(
            len(self.image_shape) == 3 and all(d >= 1 for d in self.image_shape),
            f"image_shape must be (H, W, C) with positive sizes, got "
            f"{self.image_shape}.",
        )
        _require(
            self.downsampling in DOWNSAMPLING_MODES,
            f"downsampling must be one of {DOWNSAMPLING_MODES}, got "
            f"{self.downsampling!r}.",
        )
        _require(
            self.backbone in BACKBONES,
            f"backbone must be one of {BACKBONES}, got {self.backbone!r}.",
        )
        if self.custom_backbone is not None:
            _require(
                self.backbone == "custom",
                f"custom_backbone={self.custom_backbone!r} needs "
                f"backbone='custom', got {self.backbone!r}. Set "
                "--backbone=custom or drop --custom_backbone.",
            )
            module, _, function = self.custom_backbone.partition(":")
            _require(
                bool(module) and function.isidentifier(),
                "custom_backbone must be 'module:function' (e.g. "
                f"'my_nets:small_resnet'), got {self.custom_backbone!r}.",
            )
        if self.backbone == "conv4":
            halvings, what = self.num_stages, "num_stages"
        else:
            halvings, what = len(self.resnet_widths), "len(resnet_widths)"
        min_side = 2**halvings
        _require(
            self.backbone == "custom"
            or min(self.image_shape[:2]) >= min_side,
            f"image_shape {self.image_shape} is too small for the "
            f"{self.backbone} backbone's {halvings} stages that halve H and "
            f"W; images must be at least {min_side}x{min_side}. Lower "
            f"{what} or use larger images.",
        )
        _require(
            self.bn_mode in BN_MODES,
            f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}.",
        )
        _require(
            self.dtype in DTYPES,
            f"dtype must be one of {DTYPES}, got {self.dtype!r}.",
        )
        _require(
            self.inner_lr_init > 0,
            f"inner_lr_init must be > 0, got {self.inner_lr_init}. "
            "The authors use 0.1 (Omniglot) and 0.01 (mini-ImageNet).",
        )
        _require(
            self.meta_lr > 0,
            f"meta_lr must be > 0, got {self.meta_lr}.",
        )
        _require(
            0 < self.min_meta_lr <= self.meta_lr,
            f"min_meta_lr must be in (0, meta_lr={self.meta_lr}], got "
            f"{self.min_meta_lr}. Lower --min_meta_lr or raise --meta_lr.",
        )
        _require(
            0 < self.bn_momentum <= 1,
            f"bn_momentum must be in (0, 1], got {self.bn_momentum}.",
        )
        _require(
            self.bn_epsilon > 0,
            f"bn_epsilon must be > 0, got {self.bn_epsilon}.",
        )
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"{name} must be in [0, 1), got {value}.")
        _require(
            self.first_order_to_second_order_epoch >= -1,
            "first_order_to_second_order_epoch must be >= -1 (-1: second "
            "order from epoch 0; E: first order while epoch <= E), got "
            f"{self.first_order_to_second_order_epoch}.",
        )
        # DA switches at epoch E + 1; a run of total_epochs never reaching
        # it would be first-order MAML under a second-order name.
        switch = self.first_order_to_second_order_epoch + 1
        _require(
            not self.second_order or switch < self.total_epochs,
            f"first_order_to_second_order_epoch="
            f"{self.first_order_to_second_order_epoch} switches to second "
            f"order at epoch {switch}, which a run of total_epochs="
            f"{self.total_epochs} (epochs 0..{self.total_epochs - 1}) never "
            "reaches. Set --first_order_to_second_order_epoch below "
            f"{self.total_epochs - 1} (-1: second order from the start), "
            "raise --total_epochs, or set --second_order=false for "
            "first-order MAML.",
        )
        _require(
            self.meta_grad_clip is None or self.meta_grad_clip > 0,
            f"meta_grad_clip must be None or > 0, got {self.meta_grad_clip}.",
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "MetaLearnerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown MetaLearnerConfig fields {unknown}; known fields "
                f"are {sorted(known)}."
            )
        return cls(**values)


def warn_if_msl_outlasts_the_run(config: MetaLearnerConfig) -> bool:
    """Logs a WARNING when MSL anneals over more epochs than the run has.

    MSL is on while epoch < msl_epochs (`schedules.use_multi_step_loss`),
    so with msl_epochs > total_epochs the last epoch still weights every
    step's loss and never trains on the final step's loss alone. Short
    budget runs may want that; it is never silent. Training (the apps and
    `MamlPlusPlus.fit`) calls this once at the start.

    Returns:
      Whether it warned.
    """
    if not config.multi_step_loss or config.msl_epochs <= config.total_epochs:
        return False
    log.warning(
        "msl_epochs=%d is longer than the run (total_epochs=%d): MSL is "
        "still annealing in the last epoch, so the meta-loss never becomes "
        "the final step's loss alone. Set --msl_epochs to %d or less for a "
        "run that anneals MSL out.",
        config.msl_epochs,
        config.total_epochs,
        config.total_epochs,
    )
    return True


# Antoniou et al. (2019), Sec. 4 (DA): first order for the first 50 epochs,
# i.e. epochs 0..49, second order from epoch 50.
PAPER_FIRST_ORDER_EPOCHS = 50


def mamlpp(*, paper_da: bool = False, **overrides) -> MetaLearnerConfig:
    """MAML++ with every part on, as the authors' released configs run it.

    The preset means what the paper flagfiles (`flags/maml++_*.cfg`) mean:
    LSLR, MSL, BNRS, BNWB and CA on, and second order from epoch 0
    (`first_order_to_second_order_epoch=-1`), as in the authors' configs.
    The paper's derivative-order annealing (DA, Sec. 4: first order for
    the first 50 epochs, 0..49) is an explicit option.

    Args:
      paper_da: DA as the paper describes it: first order while
        epoch <= 49 (`first_order_to_second_order_epoch=49`). The run
        must then be longer than 50 epochs, or the config is refused.
      **overrides: any `MetaLearnerConfig` field; applied last.
    """
    base = MetaLearnerConfig()  # Every part on, second order from epoch 0.
    if paper_da:
        # First order while epoch <= 49: 50 epochs.
        base = dataclasses.replace(
            base,
            first_order_to_second_order_epoch=PAPER_FIRST_ORDER_EPOCHS - 1,
        )
    return dataclasses.replace(base, **overrides)


def maml(**overrides) -> MetaLearnerConfig:
    """Plain second-order MAML (Finn et al. 2017) on the same code."""
    base = dataclasses.replace(
        MetaLearnerConfig(),
        learn_inner_lr=False,  # A fixed scalar inner rate.
        multi_step_loss=False,  # Final-step query loss only.
        first_order_to_second_order_epoch=-1,  # No DA: second order always.
        per_step_bn_statistics=False,  # One shared BN slot.
        per_step_bn_weights=False,
        cosine_annealing=False,  # Constant meta lr.
    )
    return dataclasses.replace(base, **overrides)


def first_order_maml(**overrides) -> MetaLearnerConfig:
    """First-order MAML: plain MAML with the inner gradients stopped."""
    return dataclasses.replace(maml(second_order=False), **overrides)


PRESETS = {"maml": maml, "first_order_maml": first_order_maml, "mamlpp": mamlpp}
