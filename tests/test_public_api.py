"""The public API of mamlpp_tf: its export list, and no flags in the library."""

import ast
import pathlib
import re

import mamlpp_tf

PACKAGE_DIR = pathlib.Path(mamlpp_tf.__file__).resolve().parent

EXPECTED_ALL = [
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

# `import absl.flags`, `from absl import flags`, `from absl.flags import ...`,
# and `from absl import app, flags` all import the flags module.
ABSL_FLAGS_IMPORT = re.compile(
    r"^\s*(import\s+absl\.flags\b"
    r"|from\s+absl\.flags\b"
    r"|from\s+absl\s+import\s+[^#\n]*\bflags\b)",
    re.MULTILINE,
)


def test_all_is_the_expected_export_list():
    assert mamlpp_tf.__all__ == EXPECTED_ALL


def test_every_export_exists():
    missing = [n for n in mamlpp_tf.__all__ if not hasattr(mamlpp_tf, n)]
    assert missing == []


def test_exported_names_are_what_they_claim():
    assert issubclass(mamlpp_tf.NonFiniteLossError, RuntimeError)
    config = mamlpp_tf.maml()
    assert isinstance(config, mamlpp_tf.MetaLearnerConfig)
    assert isinstance(mamlpp_tf.mamlpp(), mamlpp_tf.MetaLearnerConfig)
    assert mamlpp_tf.first_order_maml().second_order is False


def test_the_flags_pattern_catches_every_import_form():
    # The grep below is only as good as its pattern: check it bites.
    for line in (
        "import absl.flags",
        "from absl import flags",
        "from absl import app, flags",
        "from absl.flags import FLAGS",
        "    from absl import flags  # late import",
    ):
        assert ABSL_FLAGS_IMPORT.search(line), line
    for line in (
        "from absl import logging",
        "import absl.logging",
        "# from absl import flags is forbidden here",
    ):
        assert not ABSL_FLAGS_IMPORT.search(line), line


def test_library_code_never_imports_absl_flags():
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert sources, PACKAGE_DIR
    offenders = [
        str(p.relative_to(PACKAGE_DIR))
        for p in sources
        if ABSL_FLAGS_IMPORT.search(p.read_text())
    ]
    assert offenders == [], (
        "Only scripts/ may define or read flags; the library takes configs."
    )


REPO = PACKAGE_DIR.parent
# What setup.py installs from scripts/ as mamlpp_tf_scripts: the apps and
# their private helpers. Everything else the repository runs is in tools/.
INSTALLED_SCRIPTS = {
    "__init__.py",
    "_app.py",
    "_cpu_allocator.py",
    "benchmark.py",
    "evaluate.py",
    "export.py",
    "predict.py",
    "train.py",
}


def test_setup_py_citation_and_the_package_give_the_same_version():
    # Parsed, not grepped: setup.py must also be valid Python.
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    versions = [
        ast.literal_eval(keyword.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "version"
    ]
    assert versions == [mamlpp_tf.__version__]
    citation = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    assert re.findall(r"^version: (\S+)$", citation, re.MULTILINE) == [
        mamlpp_tf.__version__
    ]


def test_only_the_apps_are_installed():
    assert {p.name for p in (REPO / "scripts").iterdir()} - {
        "__pycache__"
    } == INSTALLED_SCRIPTS
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    modules = set(re.findall(r"=mamlpp_tf_scripts\.(\w+):run", setup))
    assert modules == {"train", "evaluate", "export", "benchmark", "predict"}
