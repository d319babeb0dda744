"""Meta-trains MAML / MAML++, validates every epoch, then tests.

  mamlpp-train --flagfile=flags/maml++_omniglot_5way_1shot.cfg \
      --data_dir=../shared/data/omniglot --workdir=runs/omniglot_5w1s

Flags after --flagfile override it. Rerunning the same command resumes from
the latest checkpoint; SIGINT/SIGTERM checkpoint and stop (exit 130/143).
"""

import sys

from absl import flags
from absl import logging

try:  # First: it quiets TensorFlow's C++ logs before TensorFlow loads.
    from mamlpp_tf_scripts import _app
except ImportError:  # Run as `python scripts/train.py`.
    import _app

from mamlpp_tf import MetaLearnerConfig
from mamlpp_tf import data
from mamlpp_tf import distribute
from mamlpp_tf import experiment
from mamlpp_tf import training

_DEFAULT = MetaLearnerConfig()

_DATASET = flags.DEFINE_enum(
    "dataset", None, data.DATASETS, "The images to learn from.", required=True
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Raw data folder. Omniglot: holds images_background/ and "
    "images_evaluation/ (unset: download them). mini_imagenet: holds "
    "{train,val,test}.csv and the images. synthetic: leave unset. "
    "image_folder: train/, val/ and test/ of class folders, or one folder "
    "of class folders with --split_fractions.",
)
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir",
    None,
    "Where the prepared splits are cached (unset: $TFDS_DATA_DIR or "
    "~/tensorflow_datasets).",
)
_SPLIT_SCHEME = flags.DEFINE_enum(
    "split_scheme",
    "reference",
    ("reference", "lake"),
    "Omniglot class split: 'reference' (the authors' 1150/50/423 shuffle) "
    "or 'lake' (background vs evaluation alphabets).",
)


class _NumbersParser(flags.ArgumentParser):
    """Parses 'a,b,...' into a tuple of `count` numbers of `kind`."""

    def __init__(self, kind, counts, help_text):
        self._kind, self._counts = kind, counts
        self.syntactic_help = help_text

    def parse(self, argument):
        if isinstance(argument, tuple):
            return argument
        try:
            values = tuple(self._kind(p) for p in str(argument).split(","))
        except ValueError:
            values = ()
        if len(values) not in self._counts:
            raise ValueError(f"expected {self.syntactic_help}")
        return values

    def flag_type(self):
        return f"comma-separated {self._kind.__name__}s"


class _ImageSizeParser(_NumbersParser):
    def __init__(self):
        super().__init__(int, (1, 2), "H,W or one number N for N x N")

    def parse(self, argument):
        size = super().parse(argument)
        size = size * 2 if len(size) == 1 else size
        if min(size) < 1:
            raise ValueError(f"sizes must be >= 1, got {argument!r}")
        return size


_IMAGE_SIZE = flags.DEFINE(
    _ImageSizeParser(),
    "image_size",
    None,
    "image_folder: the H,W (or one number for square) that every image is "
    "resized to (area filter, aspect ratio not kept; docs/own_data.md).",
    serializer=flags.ListSerializer(","),
)
_IMAGE_CHANNELS = flags.DEFINE_enum(
    "image_channels",
    None,
    ("1", "3"),
    "image_folder: 1 (grey, ITU-R 601 luma) or 3 (RGB); transparent pixels "
    "become white.",
)
_SPLIT_FRACTIONS = flags.DEFINE(
    _NumbersParser(float, (3,), "three fractions train,val,test"),
    "split_fractions",
    None,
    "image_folder whose data_dir is one folder of class folders: the "
    "train,val,test fractions of its classes (e.g. 0.7,0.1,0.2), split by "
    "a fixed seeded shuffle; unset: data_dir holds train/, val/, test/.",
    serializer=flags.ListSerializer(","),
)
_ALLOW_PICKLE = flags.DEFINE_bool(
    "allow_pickle",
    False,
    "Read mini-ImageNet pickles (runs code stored in them: trusted files "
    "only).",
)
_NUM_QUERIES = flags.DEFINE_integer(
    "num_queries",
    None,
    "Query examples per class (unset: the dataset's protocol, 1 for "
    "Omniglot, synthetic and image folders, 15 for mini-ImageNet).",
    lower_bound=1,
)
_NUM_EVAL_INNER_STEPS = flags.DEFINE_integer(
    "num_eval_inner_steps",
    None,
    "Inner steps at validation and test (unset: --num_inner_steps).",
    lower_bound=1,
)
_META_GRAD_CLIP = flags.DEFINE_float(
    "meta_grad_clip",
    None,
    "Clip every meta-gradient element to [-v, v] (unset: no clipping).",
    lower_bound=0.0,
)

_RESNET_WIDTHS = flags.DEFINE(
    _NumbersParser(int, range(1, 17), "one width per block, e.g. 64,160"),
    "resnet_widths",
    ",".join(str(w) for w in _DEFAULT.resnet_widths),
    "--backbone=resnet12: the channels of each residual block, one block "
    "each (the few-shot ResNet-12: 64,160,320,640).",
    serializer=flags.ListSerializer(","),
)

# MetaLearnerConfig fields set directly from the flag of the same name.
_LEARNER = {
    "backbone": flags.DEFINE_enum(
        "backbone",
        _DEFAULT.backbone,
        ("conv4", "resnet12", "custom"),
        "The network: conv4 (the paper's 4 conv stages of --num_filters), "
        "resnet12 (4 residual blocks of --resnet_widths) or custom (your "
        "own, --custom_backbone; docs/backbones.md).",
    ),
    "custom_backbone": flags.DEFINE_string(
        "custom_backbone",
        None,
        "--backbone=custom: 'module:function', an importable function "
        "that takes the MetaLearnerConfig and returns a Keras model of "
        "meta-layers or of standard layers passed through "
        "mamlpp_tf.to_meta_model (docs/backbones.md).",
    ),
    "num_ways": flags.DEFINE_integer(
        "num_ways", _DEFAULT.num_ways, "Classes per task (N).", lower_bound=2
    ),
    "num_shots": flags.DEFINE_integer(
        "num_shots",
        _DEFAULT.num_shots,
        "Support examples per class (K).",
        lower_bound=1,
    ),
    "meta_batch_size": flags.DEFINE_integer(
        "meta_batch_size",
        _DEFAULT.meta_batch_size,
        "Tasks per meta-step.",
        lower_bound=1,
    ),
    "num_filters": flags.DEFINE_integer(
        "num_filters",
        _DEFAULT.num_filters,
        "--backbone=conv4: channels of each of its 4 conv stages.",
        lower_bound=1,
    ),
    "num_inner_steps": flags.DEFINE_integer(
        "num_inner_steps",
        _DEFAULT.num_inner_steps,
        "Inner SGD steps per task in training.",
        lower_bound=1,
    ),
    "inner_lr_init": flags.DEFINE_float(
        "inner_lr_init",
        _DEFAULT.inner_lr_init,
        "Inner learning rate: fixed, or the initial LSLR value.",
    ),
    "learn_inner_lr": flags.DEFINE_bool(
        "learn_inner_lr",
        _DEFAULT.learn_inner_lr,
        "LSLR: learn an inner learning rate per layer and step.",
    ),
    "multi_step_loss": flags.DEFINE_bool(
        "multi_step_loss",
        _DEFAULT.multi_step_loss,
        "MSL: weight the query loss of every inner step, annealed to the "
        "last step over --msl_epochs.",
    ),
    "msl_epochs": flags.DEFINE_integer(
        "msl_epochs",
        _DEFAULT.msl_epochs,
        "Epochs over which MSL anneals.",
        lower_bound=1,
    ),
    "second_order": flags.DEFINE_bool(
        "second_order",
        _DEFAULT.second_order,
        "Differentiate through the inner gradients (second-order MAML).",
    ),
    "first_order_to_second_order_epoch": flags.DEFINE_integer(
        "first_order_to_second_order_epoch",
        _DEFAULT.first_order_to_second_order_epoch,
        "DA: the last first-order epoch (first order while epoch <= this: "
        "49 gives the paper's first 50 epochs, 0..49); -1: second order "
        "from the start (the authors' configs). Must be below "
        "--total_epochs - 1, so that the run reaches the switch (else exit "
        "2).",
        lower_bound=-1,
    ),
    "per_step_bn_statistics": flags.DEFINE_bool(
        "per_step_bn_statistics",
        _DEFAULT.per_step_bn_statistics,
        "BNRS: one set of BN running statistics per inner step.",
    ),
    "per_step_bn_weights": flags.DEFINE_bool(
        "per_step_bn_weights",
        _DEFAULT.per_step_bn_weights,
        "BNWB: one BN gamma/beta per inner step.",
    ),
    "bn_mode": flags.DEFINE_enum(
        "bn_mode",
        _DEFAULT.bn_mode,
        ("transductive", "per_step_running"),
        "BN at evaluation: batch statistics ('transductive', the authors' "
        "code) or the per-step running statistics.",
    ),
    "cosine_annealing": flags.DEFINE_bool(
        "cosine_annealing",
        _DEFAULT.cosine_annealing,
        "CA: cosine-anneal the meta lr from --meta_lr to --min_meta_lr.",
    ),
    "meta_lr": flags.DEFINE_float(
        "meta_lr", _DEFAULT.meta_lr, "Adam learning rate."
    ),
    "min_meta_lr": flags.DEFINE_float(
        "min_meta_lr",
        _DEFAULT.min_meta_lr,
        "The meta lr that CA reaches at --total_epochs.",
    ),
    "total_epochs": flags.DEFINE_integer(
        "total_epochs",
        _DEFAULT.total_epochs,
        "Training epochs. With --cosine_annealing it is the CA period, "
        "fixed once a run has a checkpoint (a resume with another value is "
        "refused, exit 2: it would re-warm or reshape the meta lr); "
        "without CA it may be raised to extend a run.",
        lower_bound=1,
    ),
}

_ITERATIONS_PER_EPOCH = flags.DEFINE_integer(
    "iterations_per_epoch", 500, "Meta-steps per epoch.", lower_bound=1
)
_NUM_EVAL_TASKS = flags.DEFINE_integer(
    "num_eval_tasks",
    data.NUM_EVAL_TASKS,
    "Fixed validation tasks per epoch, and fixed test tasks.",
    lower_bound=1,
)
_TOP_K_ENSEMBLE = flags.DEFINE_integer(
    "top_k_ensemble",
    5,
    "Test with the mean logits of the k best epochs by validation.",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer(
    "seed",
    0,
    "Training seed: initial weights and the training tasks.",
    lower_bound=0,
)
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every",
    100,
    "Also checkpoint every this many meta-steps (and at every epoch end).",
    lower_bound=1,
)
_KEEP_CHECKPOINTS = flags.DEFINE_integer(
    "keep_checkpoints", 3, "Training checkpoints kept.", lower_bound=2
)
_LOG_EVERY = flags.DEFINE_integer(
    "log_every", 10, "Meta-steps between progress lines.", lower_bound=1
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "The run directory: config, checkpoints, metrics.",
    required=True,
)
_RUNTIME_CONFIG = _app.define_runtime_flags()

# A flag that does nothing unless its switch is on: setting it on the
# command line with the switch off is a contradiction, refused. A value
# from a flagfile (the paper flagfiles set all three) is ignored with a
# warning, so that one part can be switched off a flagfile's experiment
# (`--flagfile=flags/maml++_... --multi_step_loss=false`).
_NEEDS_SWITCH = {
    "msl_epochs": "multi_step_loss",
    "first_order_to_second_order_epoch": "second_order",
    "min_meta_lr": "cosine_annealing",
}


def _check_contradictions() -> None:
    backbone = flags.FLAGS["backbone"].value
    if flags.FLAGS["resnet_widths"].present and backbone != "resnet12":
        raise ValueError(
            f"--resnet_widths has no effect with --backbone={backbone}. "
            "Remove it or set --backbone=resnet12."
        )
    if backbone == "resnet12" and flags.FLAGS["num_filters"].present:
        # Not an error: the paper flagfiles set it for conv4.
        logging.warning(
            "--num_filters=%d does not apply to --backbone=resnet12, whose "
            "widths are --resnet_widths=%s.", flags.FLAGS["num_filters"].value,
            ",".join(map(str, _RESNET_WIDTHS.value)),
        )
    for name, switch in _NEEDS_SWITCH.items():
        if not flags.FLAGS[name].present or flags.FLAGS[switch].value:
            continue
        if _on_command_line(name):
            raise ValueError(
                f"--{name} has no effect with --{switch}=false. Remove "
                f"--{name} or set --{switch}=true."
            )
        logging.warning(
            "--%s=%s from the flagfile has no effect with --%s=false: "
            "ignored.", name, flags.FLAGS[name].value, switch,
        )


def _on_command_line(name: str) -> bool:
    """Whether --name was given in argv itself, not read from a flagfile."""
    spellings = (f"--{name}", f"-{name}")
    return any(arg in spellings or arg.startswith(tuple(f"{s}=" for s in
                                                        spellings))
               for arg in sys.argv[1:])


def experiment_config() -> experiment.ExperimentConfig:
    """The ExperimentConfig the flags describe."""
    _check_contradictions()
    data_config = data.DataConfig(
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
        tfds_data_dir=_TFDS_DATA_DIR.value,
        split_scheme=_SPLIT_SCHEME.value,
        allow_pickle=_ALLOW_PICKLE.value,
        image_size=_IMAGE_SIZE.value,
        image_channels=(
            None
            if _IMAGE_CHANNELS.value is None
            else int(_IMAGE_CHANNELS.value)
        ),
        split_fractions=_SPLIT_FRACTIONS.value,
    )
    learner_values = {name: flag.value for name, flag in _LEARNER.items()}
    protocol = data.episode_config_for(
        _DATASET.value,
        num_ways=learner_values["num_ways"],
        num_shots=learner_values["num_shots"],
        meta_batch_size=learner_values["meta_batch_size"],
    )
    learner_config = MetaLearnerConfig(
        **learner_values,
        num_queries=_NUM_QUERIES.value or protocol.num_queries,
        num_eval_inner_steps=(
            _NUM_EVAL_INNER_STEPS.value or learner_values["num_inner_steps"]
        ),
        image_shape=data.image_shape_for(data_config),
        meta_grad_clip=_META_GRAD_CLIP.value,
        resnet_widths=_RESNET_WIDTHS.value,
    )
    return experiment.ExperimentConfig(
        learner=learner_config,
        data=data_config,
        iterations_per_epoch=_ITERATIONS_PER_EPOCH.value,
        num_eval_tasks=_NUM_EVAL_TASKS.value,
        top_k_ensemble=_TOP_K_ENSEMBLE.value,
        seed=_SEED.value,
        checkpoint_every=_CHECKPOINT_EVERY.value,
        keep_checkpoints=_KEEP_CHECKPOINTS.value,
        log_every=_LOG_EVERY.value,
    )


def runtime_config() -> distribute.RuntimeConfig:
    """The RuntimeConfig the flags describe (--strategy, --jit_compile...)."""
    return _RUNTIME_CONFIG()


def main(argv):
    """Runs the app; `argv` holds no positional arguments (checked)."""
    del argv
    with _app.checking_request():  # Writes nothing.
        config = experiment_config()
        runtime = distribute.resolve_parallel_tasks(
            runtime_config(), config.learner.image_shape
        )
        # Before any TensorFlow op: it may split the CPU into logical
        # devices.
        strategy = distribute.make_strategy(runtime)
        prepared = training.prepare(
            config, _WORKDIR.value, runtime=runtime, strategy=strategy
        )
    training.execute(prepared)


# After a failure: the checkpoints written so far are kept.
FAILURE_HINT = (
    "The traceback above shows where it failed: fix the cause, then rerun "
    "the same command to resume from the newest checkpoint in --workdir."
)


def run():
    """The `mamlpp-train` console script."""
    _app.run(main, failure_hint=FAILURE_HINT)


if __name__ == "__main__":
    run()
