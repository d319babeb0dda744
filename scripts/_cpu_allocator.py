"""The CPU allocator TensorFlow starts with, chosen before TensorFlow loads.

TensorFlow reads its allocator settings once, when it creates its first CPU
allocator, so they must be in the environment before `import tensorflow`:
`_app` calls `configure()` before it imports anything that loads it.

By default TensorFlow allocates every CPU tensor with the C library's
malloc. glibc serves requests above its mmap threshold (at most 32 MiB) with
a fresh mmap each time and unmaps them on free, so a meta-step of a large
configuration (mini-ImageNet: a 75-image activation of 48 channels at
84x84 is 100 MB) maps, page-faults, zeroes and unmaps gigabytes per step:
half of the wall time went to the kernel (docs/benchmarks.md). TensorFlow's
own best-fit-with-coalescing (BFC) allocator keeps the memory it mapped and
reuses it, so the apps turn it on unless the user's environment already
says what to use. The figures behind the choice, and what it costs in
memory, are in docs/benchmarks.md ("The allocator under load").

    TF_CPU_ALLOCATOR_USE_BFC=false mamlpp-train ...   # back to malloc

Where TensorFlow turns oneDNN on (its default on x86 CPUs with AVX-512
VNNI/BF16 or AMX; `TF_ENABLE_ONEDNN_OPTS` overrides it), the setting
`false` does not bring malloc back: TensorFlow's default CPU allocator is
then its oneDNN allocator, which serves large blocks from a BFC pool of
its own. `onednn_note()` is the line the apps log about it.
"""

import os
import sys

BFC_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
DEFAULT = "true"


def configure(environ=None) -> str:
    """Sets the default allocator unless `environ` already chooses one.

    Args:
      environ: the environment to read and update; None for `os.environ`.

    Returns:
      A line saying which allocator TensorFlow will use and why, for the
      apps to log once logging is set up.
    """
    environ = os.environ if environ is None else environ
    if BFC_VARIABLE in environ:
        return (
            f"CPU allocator: {BFC_VARIABLE}={environ[BFC_VARIABLE]} from the "
            "environment."
        )
    environ[BFC_VARIABLE] = DEFAULT
    note = (
        f"CPU allocator: TensorFlow's BFC allocator ({BFC_VARIABLE}="
        f"{DEFAULT}, the mamlpp_tf default; set {BFC_VARIABLE}=false for "
        "the C library's malloc)."
    )
    if "tensorflow" in sys.modules and environ is os.environ:
        # Too late to take effect in this process: say so, never silently.
        note += (
            " TensorFlow was imported before the apps could set it, so this "
            "process keeps the allocator it started with."
        )
    return note


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels; None if it cannot say.

    Call it after TensorFlow has loaded. The answer lives in a private
    TensorFlow module, so a TensorFlow without it gives None, not an error.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if is_enabled is None else bool(is_enabled())


def onednn_note(onednn_enabled) -> str:
    """Says what the allocator setting means next to oneDNN's state.

    Args:
      onednn_enabled: whether TensorFlow runs its oneDNN kernels (True or
        False), or None when it could not be told.

    Returns:
      A line for the apps to log after TensorFlow has loaded.
    """
    if onednn_enabled is None:
        return (
            "oneDNN: could not tell whether TensorFlow runs its oneDNN "
            "kernels; if it does, its oneDNN allocator (a BFC pool for large "
            f"blocks) replaces malloc whatever {BFC_VARIABLE} says."
        )
    if onednn_enabled:
        return (
            "oneDNN: on, so TensorFlow's default CPU allocator is its oneDNN "
            f"allocator (a BFC pool for large blocks): {BFC_VARIABLE}=false "
            "does not bring malloc back here; TF_ENABLE_ONEDNN_OPTS=0 turns "
            "oneDNN off."
        )
    return f"oneDNN: off; {BFC_VARIABLE} chooses between BFC and malloc."
