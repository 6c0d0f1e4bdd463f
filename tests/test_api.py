"""The public API of ``import dgan``: every name from its one module, on first use."""

import importlib

import pytest

import dgan
from fresh_process import run_python


def test_import_dgan_starts_no_tensorflow_until_a_name_needs_it():
    out = run_python("import sys\n"
                     "import dgan\n"
                     "stack = ('tensorflow', 'tf_keras', 'neurite', 'voxelmorph')\n"
                     "print('before:', [m for m in stack if m in sys.modules])\n"
                     "dgan.InputError\n"
                     "print('errors:', [m for m in stack if m in sys.modules])\n"
                     "dgan.Registrar\n"
                     "from dgan.compat import keras\n"
                     "print('registrar:', 'tensorflow' in sys.modules, keras.__version__[:2])\n")
    assert out.splitlines() == ["before: []", "errors: []", "registrar: True 2."]


@pytest.mark.parametrize("name", sorted(set(dgan.__all__) - {"__version__"}))
def test_every_public_name_is_its_modules_own(name):
    module = importlib.import_module(dgan._PUBLIC[name])
    assert getattr(dgan, name) is getattr(module, name)
    assert name in dir(dgan)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Registrator'"):
        dgan.Registrator  # noqa: B018
    assert dgan.__version__ == "0.1.0"
