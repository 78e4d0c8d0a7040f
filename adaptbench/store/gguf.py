"""A merged model folder written as one GGUF file, for llama.cpp, through llama.cpp's own converter
(``convert_hf_to_gguf.py`` with its ``gguf-py``): the one that knows every architecture llama.cpp runs.

The converter is llama.cpp's source, not a PyPI package: ``make setup-gguf`` takes it from the
llama-cpp-python source distribution the server is built from (:func:`extract_converter`, into
``.venv/llama.cpp``); ``--llama-cpp DIR`` or ``ADAPTBENCH_LLAMA_CPP`` names a llama.cpp checkout instead.
Weights are written as float32 (``--outtype f32``): transformers reads such a file back to the same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

from ..errors import AdaptbenchError

CONVERTER = "convert_hf_to_gguf.py"
ENV = "ADAPTBENCH_LLAMA_CPP"
KEEP = (CONVERTER, "conversion/", "gguf-py/")  # what the converter needs of llama.cpp's source


def find_converter(llama_cpp: str | None = None) -> str:
    """The llama.cpp folder holding the converter: ``llama_cpp``, ``$ADAPTBENCH_LLAMA_CPP``, or the one
    ``make setup-gguf`` fills beside the interpreter's environment."""
    named = llama_cpp or os.environ.get(ENV)
    if named:
        if not os.path.isfile(os.path.join(named, CONVERTER)):
            raise AdaptbenchError(f"{named}: no {CONVERTER} there (a llama.cpp checkout has it at its top)")
        return named
    default = os.path.join(sys.prefix, "llama.cpp")
    if os.path.isfile(os.path.join(default, CONVERTER)):
        return default
    raise AdaptbenchError(f"--format gguf needs llama.cpp's {CONVERTER}: run make setup-gguf, or give --llama-cpp "
                          f"DIR (a llama.cpp checkout; or set {ENV})")


def convert(merged: str, out_file: str, llama_cpp: str | None = None, architecture: str = "model") -> None:
    """``merged`` (a transformers folder) -> ``out_file`` (GGUF, float32); on failure the architecture and the
    converter's own words."""
    where = find_converter(llama_cpp)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(where, "gguf-py"),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, os.path.join(where, CONVERTER), merged, "--outfile", out_file,
                           "--outtype", "f32"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        lines = [x for x in said if "not supported" in x or "Error" in x] or said[-3:]
        raise AdaptbenchError(f"--format gguf: llama.cpp's converter ({where}) could not convert a {architecture}: "
                              + " / ".join(x.strip() for x in lines[-3:]))


def extract_converter(sdist_dir: str, dest: str) -> str:
    """The converter out of the llama-cpp-python source distribution in ``sdist_dir`` (``vendor/llama.cpp``)
    into ``dest``; returns ``dest``."""
    archives = [f for f in os.listdir(sdist_dir) if f.startswith("llama_cpp_python") and f.endswith(".tar.gz")]
    if not archives:
        raise AdaptbenchError(f"{sdist_dir}: no llama_cpp_python-*.tar.gz (pip download --no-binary :all: "
                              f"llama-cpp-python)")
    with tarfile.open(os.path.join(sdist_dir, sorted(archives)[-1])) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and parts[1].startswith(KEEP) and (member.isfile() or member.isdir()):
                member.name = parts[1]
                tar.extract(member, dest, filter="data")
    if not os.path.isfile(os.path.join(dest, CONVERTER)):
        raise AdaptbenchError(f"{sdist_dir}: the archive holds no vendor/llama.cpp/{CONVERTER}")
    return dest
