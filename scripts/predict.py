"""Classifies new classes from a few examples with an exported model.

  mamlpp-predict --model_dir=exported/my_images --support_dir=support \
      --query=queries --output=predictions.csv

--support_dir holds one folder per new class (the folder name is the class
name) with a few images each: exactly the model's number of classes.
--query is an image, a folder of images, or a folder of class folders named
like the support classes (then the accuracy is reported, and written to a
.json output under "accuracy"). Writes one row per query image (CSV or JSON
by the --output suffix) and prints a summary. See mamlpp_tf/prediction.py
for what transductive batch norm means for --query_batch_size.
"""

from absl import flags

try:  # First: it quiets TensorFlow's C++ logs before TensorFlow loads.
    from mamlpp_tf_scripts import _app
except ImportError:  # Run as `python scripts/predict.py`.
    import _app

from mamlpp_tf import prediction

_MODEL_DIR = flags.DEFINE_string(
    "model_dir",
    None,
    "A SavedModel written by mamlpp-export (its --export_dir).",
    required=True,
)
_SUPPORT_DIR = flags.DEFINE_string(
    "support_dir",
    None,
    "One folder per new class, named by the class, with a few images each.",
    required=True,
)
_QUERY = flags.DEFINE_string(
    "query",
    None,
    "An image, a folder of images, or a folder of class folders named like "
    "the support classes (to score the accuracy).",
    required=True,
)
_OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "Where to write one row per query image: .csv or .json (replaced if it "
    "exists).",
    required=True,
)
_QUERY_BATCH_SIZE = flags.DEFINE_integer(
    "query_batch_size",
    None,
    "Score the queries this many at a time, in sorted order (unset: all at "
    "once). With transductive batch norm the images scored together shift "
    "each other's predictions; see docs/own_data.md.",
    lower_bound=1,
)


def main(argv):
    """Runs the app; `argv` holds no positional arguments (checked)."""
    del argv
    with _app.checking_request():  # Reads and checks; writes nothing.
        prediction.check_output_path(_OUTPUT.value)
        request = prediction.read_request(
            _MODEL_DIR.value,
            _SUPPORT_DIR.value,
            _QUERY.value,
            query_batch_size=_QUERY_BATCH_SIZE.value,
        )
    predictions = prediction.run_request(request)
    path = prediction.write_predictions(predictions, _OUTPUT.value)
    print(prediction.summary(predictions))
    print(f"Wrote {path}.")


def run():
    """The `mamlpp-predict` console script."""
    _app.run(main)


if __name__ == "__main__":
    run()
