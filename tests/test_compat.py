"""dgan.compat: what quiet() holds back while the stack starts (the stack on first use:
tests/test_api.py)."""

import os
import sys

import pytest

from dgan import compat
from fresh_process import run_python


def test_held_back_stderr_is_dropped_when_the_block_succeeds(capfd):
    with compat._stderr_held_back():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
        print("a Python warning", file=sys.stderr)
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "after\n"


def test_held_back_stderr_is_written_out_when_the_block_fails(capfd):
    with pytest.raises(ImportError, match="no such library"):
        with compat._stderr_held_back():
            os.write(2, b"F0000 what went wrong first\n")
            print("then this", file=sys.stderr)
            raise ImportError("no such library")
    assert capfd.readouterr().err == "F0000 what went wrong first\nthen this\n"


def test_unknown_names_are_still_attribute_errors():
    with pytest.raises(AttributeError, match="has no attribute 'torch'"):
        compat.torch  # noqa: B018


def test_registering_without_a_model_imports_neither_neurite_nor_voxelmorph():
    """They (and scikit-learn, which neurite imports) are seconds of start-up that only a model
    needs."""
    loaded = run_python(
        "import sys\n"
        "import numpy as np\n"
        "from dgan.registration.registrar import Registrar\n"
        "from dgan.registration.settings import RefineConfig\n"
        "r = Registrar(None, refine_config=RefineConfig(steps=1, levels=(1,)))\n"
        "r.register_arrays(np.random.rand(16, 16, 16).astype('f'),\n"
        "                  np.random.rand(16, 16, 16).astype('f'))\n"
        "print(sorted(m for m in ('neurite', 'voxelmorph', 'sklearn') if m in sys.modules))\n")
    assert loaded.strip().splitlines()[-1] == "[]"


def test_compile_cache_is_set_before_tensorflow_starts_and_per_cpu(tmp_path):
    out = run_python(
        "import os, sys\n"
        "from dgan import compat\n"
        f"folder = compat.use_compile_cache({str(tmp_path)!r})\n"
        "print(folder)\n"
        "print(os.environ['TF_XLA_FLAGS'])\n"
        "print('tensorflow' in sys.modules)\n"
        "print(compat.use_compile_cache())\n")  # a second call: the flags name a cache already
    folder, flags, started, again = out.strip().splitlines()[-4:]
    assert os.path.isdir(folder) and os.path.dirname(folder) == str(tmp_path)
    assert os.path.basename(folder).startswith("tf-") and "-cpu-" in folder
    assert f"--tf_xla_persistent_cache_directory={folder}" in flags.split()
    assert started == "False" and again == "None"


def test_compile_cache_off_and_too_late(tmp_path, monkeypatch):
    monkeypatch.setenv(compat.COMPILE_CACHE_ENV, "off")
    assert compat.use_compile_cache(str(tmp_path)) is None
    monkeypatch.delenv(compat.COMPILE_CACHE_ENV)
    assert compat.tf.__name__ == "tensorflow"  # started: the flags would come too late
    assert compat.use_compile_cache(str(tmp_path)) is None and not list(tmp_path.iterdir())


#: A compiled stage on a small random pair, in a fresh process (printing "ok" or the one line).
COMPILED_STAGES = {
    "refinement": (
        "from dgan.registration.refine import refine\n"
        "from dgan.registration.settings import RefineConfig\n"
        "a, b = rng.random((2, 16, 16, 16)).astype('f')\n"
        "run = lambda: refine(a, b, config=RefineConfig(steps=1, levels=(1,), xla='on', "
        "lg_noise=0))\n"),
    "affine": (
        "from dgan.data.io import Volume\n"
        "from dgan.registration.affine import AffineConfig, estimate_affine\n"
        "a, b = (Volume(0.2 + rng.random((40, 40, 40)).astype('f'), np.diag([2.0] * 3 + [1.0]))\n"
        "        for _ in range(2))\n"
        "run = lambda: estimate_affine(a, b, AffineConfig(levels_mm=(4.0,), steps=(2,), "
        "rigid_steps=1, xla='on'))\n"),
}


@pytest.mark.parametrize("stage", sorted(COMPILED_STAGES))
def test_a_damaged_compile_cache_is_one_line_naming_the_folder(tmp_path, stage):
    """A cache file cut short (a full disk, a copy) fails every compiled refinement or affine
    estimate after it: the error says so and names the folder, instead of TensorFlow's graph
    trace."""
    cache = tmp_path / "cache"
    code = (
        "import os\n"
        f"os.environ['TF_XLA_FLAGS'] = '--tf_xla_persistent_cache_directory={cache} "
        "--tf_xla_persistent_cache_device_types=CPU,XLA_CPU'\n"
        "import numpy as np\n"
        "from dgan.errors import InputError\n"
        "rng = np.random.default_rng(0)\n"
        + COMPILED_STAGES[stage] +
        "try:\n"
        "    run()\n"
        "    print('ok')\n"
        "except InputError as error:\n"
        "    print(error)\n")
    assert run_python(code).strip().splitlines()[-1] == "ok"  # compiled, and written
    files = list(cache.iterdir())
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[:100])
    said = run_python(code).strip().splitlines()[-1]
    assert said.startswith(f"{cache}: a compiled program could not be read from the XLA "
                           "compile cache (")
    assert said.endswith("delete that folder, or set DGAN_COMPILE_CACHE=off")
