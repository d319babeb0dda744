"""The MAML++ data pipeline: class splits prepared with TFDS, tf.data episodes.

Example:
  >>> splits = load_splits(DataConfig(dataset="omniglot", data_dir=root))
  >>> config = episode_config_for(
  ...     "omniglot", num_ways=20, num_shots=1, meta_batch_size=8, seed=0
  ... )
  >>> train = episode_dataset(splits["train"], config, split="train")
  >>> val = episode_dataset(
  ...     splits["val"], config, split="val", num_tasks=NUM_EVAL_TASKS
  ... )

Your own images, one folder per class (see `image_folder`):
  >>> splits = load_splits(
  ...     DataConfig(
  ...         dataset="image_folder",
  ...         data_dir="my_images",  # train/, val/, test/ of class folders
  ...         image_size=(28, 28),
  ...         image_channels=3,
  ...     ),
  ...     episode_config=episode_config_for(
  ...         "image_folder", num_ways=5, num_shots=1, meta_batch_size=8
  ...     ),  # Optional: checks the folder yields these tasks first.
  ... )
"""

from mamlpp_tf.data.class_images import ClassImages
from mamlpp_tf.data.config import DATASETS
from mamlpp_tf.data.config import NUM_EVAL_TASKS
from mamlpp_tf.data.config import SPLITS
from mamlpp_tf.data.config import DataConfig
from mamlpp_tf.data.config import EpisodeConfig
from mamlpp_tf.data.config import episode_config_for
from mamlpp_tf.data.config import image_shape_for
from mamlpp_tf.data.episodes import episode_dataset
from mamlpp_tf.data.episodes import validate_episode_feasible
from mamlpp_tf.data.loading import load_splits
from mamlpp_tf.data.synthetic import write_mini_imagenet_folder
from mamlpp_tf.data.user_data import Episodes
from mamlpp_tf.data.user_data import make_episodes

__all__ = [
    "DATASETS",
    "NUM_EVAL_TASKS",
    "SPLITS",
    "ClassImages",
    "DataConfig",
    "EpisodeConfig",
    "Episodes",
    "episode_config_for",
    "episode_dataset",
    "image_shape_for",
    "load_splits",
    "make_episodes",
    "validate_episode_feasible",
    "write_mini_imagenet_folder",
]
