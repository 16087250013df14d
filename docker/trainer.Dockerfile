# syntax=docker/dockerfile:1
# The trainer image: what every pod of a kubetune PyTorchJob runs (`torchrun --module kubetune train ...`).
# CUDA torch, DeepSpeed with the ops the trainer uses compiled in, and kubetune. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t "$(python -c 'from kubetune import images; print(images.TRAINER_IMAGE)')" .
# Pins: the base image tags here, torch/deepspeed in docker/requirements-trainer.txt, the rest in
# docker/requirements-common.txt (`make check-image-requirements` checks that they all resolve).

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

# ---------------------------------------------------------------------------------------------- build
# The devel image has nvcc: DeepSpeed's CUDA ops are compiled here, once, not JIT-compiled in every pod.
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# A100, A10/A40, L4/L40S, H100: the GPU generations the ops are compiled for (add yours: "8.0;9.0+PTX").
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev python3-venv g++ \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY docker/requirements-common.txt docker/requirements-trainer.txt /tmp/requirements/
# FusedAdam (the GPU optimizer step), CPUAdam (deepspeed.offload: cpu) and the flatten/unflatten utils
# ZeRO-2 uses; no GPU is visible while building, so the accelerator is named.
RUN DS_ACCELERATOR=cuda DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" MAX_JOBS=4 \
    pip install --no-build-isolation -r /tmp/requirements/requirements-trainer.txt \
    && python -c "from deepspeed.git_version_info import installed_ops as ops; \
missing = [op for op in ('fused_adam', 'cpu_adam', 'utils') if not ops.get(op)]; \
assert not missing, f'DeepSpeed ops not prebuilt: {missing}'"
COPY pyproject.toml README.md /tmp/kubetune/
COPY src /tmp/kubetune/src
RUN pip install --no-deps /tmp/kubetune && pip check

# -------------------------------------------------------------------------------------------- runtime
# torch's wheels carry the CUDA libraries; the runtime image adds the driver-facing pieces, not nvcc.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/kubetune/.cache/huggingface
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's images ship a user `ubuntu` with uid 1000; the pods run as uid 1000 (kubetune.cluster.job.TRAINER_UID).
# KFP's launcher copies artifacts to /gcs, /minio and /s3; KFP backends before 2.3 do not mount
# volumes there, so the directories must exist and belong to the step's (non-root) user.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin kubetune \
    && mkdir /gcs /minio /s3 && chown 1000:1000 /gcs /minio /s3
COPY --from=build /opt/venv /opt/venv
USER 1000:1000
WORKDIR /home/kubetune
CMD ["kubetune", "--help"]
