# giellm-ray cluster image: Ray's CUDA 13.0 image plus the pinned GPU stack and this repository,
# so a GPU node that scales up from zero pulls cached layers instead of pip-installing ~4 GB of
# CUDA wheels (torch 2.13.0 + its cu13 libraries, vLLM, DeepSpeed) before its first task.
#
# Versions come from one place: pyproject.toml's `gpu` extra. The first RUN below turns it into a
# constraints file; every pip call here installs under it, and tests/unit/test_gpu_stack.py checks
# that this file, pyproject.toml and cluster.yaml agree.
#
# Why cu130 and not rayproject/ray:2.60.0-py311-gpu: vllm==0.32.0 (the `gpu` extra) is built for
# CUDA 13 (its wheel requires nvidia-cutlass-dsl[cu13]) and pins torch==2.13.0; PyPI's torch
# 2.13.0 is the CUDA 13.0 build (cuda-toolkit 13.0.3, nvidia-*-cu13). Ray's "-gpu" tag aliases
# the CUDA 12.1.1 image, whose nvcc 12.1 cannot build DeepSpeed's ops for a CUDA 13 torch
# (DeepSpeed refuses a major mismatch). "-cu130" is nvidia/cuda:13.0.0-devel under the same Ray
# 2.60.0, so nvcc matches torch.
#
# Why py312: Ray publishes its CUDA 13.0 images for Python 3.12 only (3.10 was added later, by
# ray PR #61497), not for 3.11. Evidence, read 2026-12: ray-project/ray's release build matrix
# builds the `ray` CUDA images as cu12.3.2 x py3.10-3.13 plus one adjustment {python 3.12,
# cu13.0.0-cudnn}, and `ray-llm` as cu13.0.0 x py3.12 (+ cu12.8.1 x py3.11) (the same matrix is
# the fixture of ray's ci/ray_ci release-filter tests); ray-images.json lists cu13.0.0-cudnn as a
# platform, which names what may be built, not what each Python gets; public projects pull
# rayproject/ray-llm:2.57.0-py312-cu130 and 2.58.0-py312-cu130, and none a py311-cu130 tag. So
# the tag below is the one that exists; every wheel we install has a cp312 (or abi3) build. Hosts need NVIDIA driver >= 580 (CUDA 13.0's floor; cluster.yaml checks it).
# A100 (sm_80), H100/H200 (sm_90) are supported by CUDA 13; V100 (sm_70) is not.
#
# Build and push (from the repository root, on any x86_64 machine with Docker; no GPU needed;
# ~20 min and ~30 GB of disk, most of it the DeepSpeed op build and the CUDA wheels):
#
#   ACCOUNT=123456789012 REGION=us-east-1 REPO=giellm-ray            # EDIT: your account/region
#   REGISTRY=$ACCOUNT.dkr.ecr.$REGION.amazonaws.com
#   TAG=2.60.0-py312-cu130                                           # add -$(git rev-parse --short HEAD) per rebuild
#   aws ecr create-repository --repository-name $REPO --region $REGION   # once
#   aws ecr get-login-password --region $REGION | docker login --username AWS --password-stdin $REGISTRY
#   docker build -t $REGISTRY/$REPO:$TAG .
#   docker run --rm -e DS_ACCELERATOR=cuda $REGISTRY/$REPO:$TAG ds_report   # fused_adam, cpu_adam: [YES]
#   docker push $REGISTRY/$REPO:$TAG
#
# then put $REGISTRY/$REPO:$TAG into cluster.yaml's docker.image (marked EDIT). Rebuild and push
# when pyproject.toml changes; code changes reach jobs through `ray job submit --working-dir .`.

FROM rayproject/ray:2.60.0-py312-cu130

# Names the CUDA major.minor the stack is built for; the build fails if torch carries another.
ENV GIELLM_CUDA=13.0
# DeepSpeed ops are compiled here, where there is no GPU to ask: A100 = sm_80, H100/H200 = sm_90
# (+PTX so newer GPUs can JIT from it).
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX"
ENV GIELLM_HOME=/home/ray/giellm-ray

# Dependency layers first (cached while only code changes): pyproject.toml alone decides them.
COPY --chown=ray:users pyproject.toml README.md /home/ray/giellm-ray/
WORKDIR /home/ray/giellm-ray
# ~/gpu-constraints.txt: the `gpu` extra with extras stripped (pip rejects extras in constraints);
# ~/image-requirements.txt: base dependencies + the `gpu` and `dev` extras (dev: pytest for
# `pytest -m gpu` on a node).
RUN python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; gpu = p['optional-dependencies']['gpu']; dev = p['optional-dependencies']['dev']; open('/home/ray/gpu-constraints.txt', 'w').write(''.join(re.sub(r'\[[^]]*\]', '', r) + '\n' for r in gpu)); open('/home/ray/image-requirements.txt', 'w').write(''.join(r + '\n' for r in p['dependencies'] + gpu + dev))" \
    && cat /home/ray/gpu-constraints.txt

# torch first: DeepSpeed's setup.py needs it importable to compile ops.
RUN pip install --no-cache-dir -c /home/ray/gpu-constraints.txt torch ninja

# DeepSpeed with the ops this project uses compiled now instead of JIT on each new node
# (~1-2 min and ~7 GB of RAM per op per node otherwise): FusedAdam for GPU training
# (build_ds_config's AdamW), CPUAdam for cpu_offload. --no-build-isolation so setup.py sees the
# torch above. DeepSpeed 0.19.8 accepts no CUDA 13 minor mismatch, so nvcc (13.0 here) must equal
# torch.version.cuda (13.0). DS_ACCELERATOR=cuda because a build has no GPU to detect (DeepSpeed
# would fall back to its CPU accelerator and skip the CUDA ops).
RUN DS_ACCELERATOR=cuda DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 \
    pip install --no-cache-dir --no-build-isolation -c /home/ray/gpu-constraints.txt deepspeed

# Everything else (vLLM, transformers, accelerate, peft, the base dependencies).
# DeepSpeed and torch are already at their pinned versions, so pip keeps them.
RUN pip install --no-cache-dir -c /home/ray/gpu-constraints.txt -r /home/ray/image-requirements.txt

# Fail the build, not the first job, if the stack is not what pyproject pins.
RUN python -c "import importlib.metadata as m, os, re; pins = [re.split('==', l.strip()) for l in open('/home/ray/gpu-constraints.txt') if '==' in l]; bad = [(n, v, m.version(n)) for n, v in pins if m.version(n) != v]; assert not bad, f'not the pinned versions: {bad}'; import torch; assert torch.version.cuda.startswith(os.environ['GIELLM_CUDA']), torch.version.cuda; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
    && DS_ACCELERATOR=cuda ds_report

# The repository last: editable, so jobs/configs (deploy.yaml's config path) and benchmarks sit
# beside the package at $GIELLM_HOME.
COPY --chown=ray:users . /home/ray/giellm-ray
RUN pip install --no-cache-dir --no-deps -e /home/ray/giellm-ray
