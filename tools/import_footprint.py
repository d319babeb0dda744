"""What a framework holds in memory once imported, before building anything.

  python tools/import_footprint.py [--torch_python=TORCH_VENV/bin/python]

Each figure comes from a fresh interpreter that runs only the import and
then reads /proc/self/statm: the resident set, its private (anonymous)
part, and the file pages of the libraries (the rest). Rows:

- `import tensorflow, keras` as installed;
- the same with matplotlib hidden from the import system (Keras 3 imports
  `matplotlib.pyplot` whenever matplotlib is installed, e.g. by this
  project's `plots` extra);
- `import torch` in --torch_python, where given: the authors' framework.

docs/benchmarks.md ("Peak RSS against private memory") quotes these figures.
"""

import json
import os
import pathlib
import subprocess
import sys

from absl import app
from absl import flags

_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python",
    None,
    "A Python with PyTorch, for the authors' framework's row (optional).",
)

_PROCESS_MEMORY = (
    pathlib.Path(__file__).resolve().parent.parent
    / "mamlpp_tf"
    / "process_memory.py"
)
# Runs in the child: hides the named top-level packages, imports, measures
# with process_memory.read_statm (loaded by path: the mamlpp_tf package
# imports TensorFlow, and the child may not even have it).
_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_pm", {module!r})
process_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(process_memory)
hidden = {hidden!r}

class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ImportError(f"{{name}} hidden by import_footprint.py")
        return None

sys.meta_path.insert(0, _Hide())
{imports}
rss, anon = process_memory.read_statm()
print(json.dumps({{
    "rss_bytes": rss,
    "anon_bytes": anon,
    "modules": len(sys.modules),
    "loaded": sorted(m for m in {watch!r} if m in sys.modules),
}}))
"""


def footprint(python, imports, hidden=(), watch=()) -> dict:
    """Memory of a fresh `python` after running `imports`.

    Raises RuntimeError with the child's error where the import fails.
    """
    code = _CHILD.format(
        module=str(_PROCESS_MEMORY),
        hidden=set(hidden),
        imports=imports,
        watch=watch,
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{python} could not run {imports!r} (hidden: "
            f"{sorted(hidden) or 'nothing'}):\n{result.stderr[-2000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _row(label, figures) -> str:
    rss, anon = figures["rss_bytes"] / 1e9, figures["anon_bytes"] / 1e9
    loaded = ", ".join(figures["loaded"]) or "none"
    return (
        f"| {label} | {rss:.2f} GB | {anon:.2f} GB | {rss - anon:.2f} GB "
        f"| {figures['modules']} | {loaded} |"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not pathlib.Path("/proc/self/statm").exists():
        sys.exit("error: needs Linux's /proc/self/statm")
    watch = ("matplotlib",)
    tf_import = "import tensorflow, keras"
    rows = [
        (
            f"`{tf_import}`",
            footprint(sys.executable, tf_import, watch=watch),
        ),
        (
            f"`{tf_import}`, matplotlib hidden",
            footprint(
                sys.executable, tf_import, hidden=("matplotlib",), watch=watch
            ),
        ),
    ]
    if _TORCH_PYTHON.value:
        python = os.path.expanduser(_TORCH_PYTHON.value)
        rows.append(
            ("`import torch`", footprint(python, "import torch", watch=watch))
        )
    print(
        "| import | resident | private | library file pages | modules "
        "| of these loaded: matplotlib |"
    )
    print("|---|---|---|---|---|---|")
    for label, figures in rows:
        print(_row(label, figures))


if __name__ == "__main__":
    app.run(main)
