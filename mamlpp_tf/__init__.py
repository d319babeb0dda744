"""mamlpp_tf: MAML++ (How to Train Your MAML) in TensorFlow 2 / Keras 3."""

from mamlpp_tf.config import MetaLearnerConfig
from mamlpp_tf.distribute import RuntimeConfig
from mamlpp_tf.evaluation import evaluate_workdir
from mamlpp_tf.experiment import ExperimentConfig
from mamlpp_tf.export import export_workdir
from mamlpp_tf.config import first_order_maml
from mamlpp_tf.config import maml
from mamlpp_tf.config import mamlpp
from mamlpp_tf.learner import MetaLearner
from mamlpp_tf.learner import NonFiniteLossError
from mamlpp_tf.schedules import cosine_lr
from mamlpp_tf.schedules import msl_weights
from mamlpp_tf.training import train_and_evaluate

__version__ = "0.2.0"  # Also setup.py's version.

__all__ = [
    "ExperimentConfig",
    "MetaLearner",
    "MetaLearnerConfig",
    "NonFiniteLossError",
    "RuntimeConfig",
    "cosine_lr",
    "evaluate_workdir",
    "export_workdir",
    "first_order_maml",
    "maml",
    "mamlpp",
    "msl_weights",
    "train_and_evaluate",
]
