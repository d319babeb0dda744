"""mamlpp_tf: MAML++ (How to Train Your MAML) in TensorFlow 2 / Keras 3."""

from mamlpp_tf.config import MetaLearnerConfig
from mamlpp_tf.config import first_order_maml
from mamlpp_tf.config import maml
from mamlpp_tf.config import mamlpp
from mamlpp_tf.learner import MetaLearner
from mamlpp_tf.learner import NonFiniteLossError
from mamlpp_tf.schedules import cosine_lr
from mamlpp_tf.schedules import msl_weights

__version__ = "0.1.0"

__all__ = [
    "MetaLearner",
    "MetaLearnerConfig",
    "NonFiniteLossError",
    "cosine_lr",
    "first_order_maml",
    "maml",
    "mamlpp",
    "msl_weights",
]
