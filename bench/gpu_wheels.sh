#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on a GPU machine that has PyTorch (CUDA build), accelerate, tokenizers,
# safetensors, opencv, scipy and numpy preinstalled but cannot reach a package registry (docs/gpu_check.md).
#
#   bash bench/gpu_wheels.sh [FOLDER]        # default FOLDER: .whl (git-ignored), about 20 MB
#
# Run it where pip reaches PyPI. The wheels are for CPython 3.12 on x86-64 Linux; on the GPU machine:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# What travels and why:
# - transformers (our pin): model/configuration_pixellm.py uses transformers.configuration_utils.SubConfigSpec,
#   which transformers 5.17 lacks. The pinned release runs with the huggingface_hub (>= 1.31) and tokenizers
#   (>= 0.23.1) found there.
# - peft, pycocotools, deepspeed (our pins): peft's version there is not known; the other two are absent.
# - hjson, pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions: what deepspeed
#   imports and the GPU machine may lack or hold too old (the versions our pinned install resolves).
# deepspeed is published as a source archive only; `pip wheel` builds a pure-Python wheel (its CUDA ops are
# compiled just in time on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.whl}"
pip=(python3 -m pip)

pin() {
    local line
    line=$(grep -E "^$1==" requirements.txt | cut -d' ' -f1)
    if [ -z "$line" ]; then
        echo "requirements.txt has no '$1==' pin" >&2
        exit 1
    fi
    echo "$line"
}

platform=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$out"
rm -f "$out"/*.whl  # one version of each package: two would stop the install there
"${pip[@]}" download --quiet --no-deps --only-binary=:all: "${platform[@]}" -d "$out" \
    "$(pin transformers)" "$(pin peft)" "$(pin pycocotools)" \
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
"${pip[@]}" wheel --quiet --no-deps -w "$out" "$(pin deepspeed)"
ls -l "$out"
du -sh "$out"
