"""mamlpp_tf: MAML++ (How to Train Your MAML) in TensorFlow 2 / Keras 3."""

from mamlpp_tf.backbone import MetaModel
from mamlpp_tf.backbone import bn_kwargs
from mamlpp_tf.config import MetaLearnerConfig
from mamlpp_tf.convert import to_meta_model
from mamlpp_tf.distribute import RuntimeConfig
from mamlpp_tf.evaluation import evaluate_workdir
from mamlpp_tf.experiment import ExperimentConfig
from mamlpp_tf.export import export_workdir
from mamlpp_tf.config import first_order_maml
from mamlpp_tf.config import maml
from mamlpp_tf.config import mamlpp
from mamlpp_tf.keras_model import KeepTopK
from mamlpp_tf.keras_model import MamlppClassifier
from mamlpp_tf.keras_model import MetaSchedule
from mamlpp_tf.keras_model import evaluate_top_k
from mamlpp_tf.learner import MetaLearner
from mamlpp_tf.learner import NonFiniteLossError
from mamlpp_tf.resnet import build_resnet12
from mamlpp_tf.data.user_data import Episodes
from mamlpp_tf.data.user_data import make_episodes
from mamlpp_tf.schedules import cosine_lr
from mamlpp_tf.schedules import msl_weights
from mamlpp_tf.torch_adam import TorchAdam
from mamlpp_tf.training import train_and_evaluate

__version__ = "0.2.0"  # Also setup.py's version.

__all__ = [
    "Episodes",
    "ExperimentConfig",
    "KeepTopK",
    "MamlppClassifier",
    "MetaLearner",
    "MetaLearnerConfig",
    "MetaModel",
    "MetaSchedule",
    "NonFiniteLossError",
    "RuntimeConfig",
    "TorchAdam",
    "bn_kwargs",
    "build_resnet12",
    "cosine_lr",
    "evaluate_top_k",
    "evaluate_workdir",
    "export_workdir",
    "first_order_maml",
    "maml",
    "make_episodes",
    "mamlpp",
    "msl_weights",
    "to_meta_model",
    "train_and_evaluate",
]
