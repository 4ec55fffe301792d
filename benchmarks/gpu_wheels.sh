#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.py needs on the GPU machine, whose Python 3.12 has torch,
# numpy, pandas, pyyaml and transformers but not pydantic (worldrep's specs): pydantic and its
# dependencies as py3.12 manylinux wheels, into .whl/ at the repository root (.gitignore'd).
# Carry .whl/ to the machine; gpu_check.py installs them there with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
# The versions are those the tests ran with here.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
    typing-extensions==4.16.0
ls -l .whl
