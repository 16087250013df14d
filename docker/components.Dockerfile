# syntax=docker/dockerfile:1
# The component image: the pipeline's steps other than training itself (validate, preprocess, tokenize,
# evaluate, and the train step that submits the PyTorchJob and waits for it). CPU torch, no CUDA.
# Build from the repository root:
#   docker build -f docker/components.Dockerfile -t "$(python -c 'from kubetune import images; print(images.COMPONENT_IMAGE)')" .
# Pins: the base image tag here, torch/deepspeed in docker/requirements-components.txt, the rest in
# docker/requirements-common.txt (`make check-image-requirements` checks that they all resolve).

# ---------------------------------------------------------------------------------------------- build
FROM python:3.11.13-slim-bookworm AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY docker/requirements-common.txt docker/requirements-components.txt /tmp/requirements/
# deepspeed is built from its sdist against the torch above; no op is compiled (none runs on these steps).
RUN DS_BUILD_OPS=0 pip install --no-build-isolation -r /tmp/requirements/requirements-components.txt
COPY pyproject.toml README.md /tmp/kubetune/
COPY src /tmp/kubetune/src
RUN pip install --no-deps /tmp/kubetune && pip check

# -------------------------------------------------------------------------------------------- runtime
FROM python:3.11.13-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/kubetune/.cache/huggingface
# KFP's launcher copies artifacts to /gcs, /minio and /s3; KFP backends before 2.3 do not mount
# volumes there, so the directories must exist and belong to the step's (non-root) user.
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin kubetune \
    && mkdir /gcs /minio /s3 && chown 1000:1000 /gcs /minio /s3
COPY --from=build /opt/venv /opt/venv
USER 1000:1000
WORKDIR /home/kubetune
CMD ["kubetune", "--help"]
