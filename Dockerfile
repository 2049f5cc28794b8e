# llava-serve GPU image: CUDA runtime + a CUDA build of torch + the project, run as a non-root user.
#   docker build -t llava-serve .
#   docker run --gpus all -p 8000:8000 -v $PWD/models:/models:ro llava-serve \
#       --model /models/NAME --quantization bitsandbytes-4bit
# Every `llava-serve serve` flag is also an environment variable LLAVA_SERVE_<FLAG> (docs/DEPLOY.md).
# Versions: the base image and torch are pinned here, the project's direct dependencies in
# docker/constraints.txt (the versions `make test` ran with). torch 2.13 ships CUDA 12.6 and 13.0
# wheels; cu130 needs an NVIDIA driver >= 580 (use TORCH_INDEX=.../cu126 with a 12.6 base for older drivers).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# DL3008 (apt pins) ignored: Ubuntu's archive keeps only the newest patch of a package, so exact
# apt pins break the build within weeks; the pinned base image tag fixes the release (python3 3.12).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# torch first, from PyTorch's CUDA index; the project's `torch>=2.4,<3` range then keeps it.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY docker/constraints.txt /src/docker/constraints.txt
COPY pyproject.toml README.md /src/
COPY model_runtime /src/model_runtime
COPY server /src/server
RUN pip install --constraint /src/docker/constraints.txt /src \
 && llava-serve serve --help > /dev/null

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# DL3008 ignored for the same reason: the pinned base image fixes the release of python3 and tini.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 llava \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/llava llava \
 && mkdir -p /models /cache/huggingface \
 && chown llava:llava /cache/huggingface
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    LLAVA_SERVE_HOST=0.0.0.0 \
    LLAVA_SERVE_PORT=8000 \
    LLAVA_SERVE_DEVICE=cuda
# Weights are mounted read-only at /models (-v $PWD/models:/models:ro); hub downloads and the
# compiled-kernel caches go to the HF_HOME volume.
VOLUME ["/cache/huggingface"]
WORKDIR /home/llava
USER 10001:10001
EXPOSE 8000
# /ready is 200 only when the model is loaded and the engine makes progress. Loading a large
# checkpoint takes minutes: the start period covers it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LLAVA_SERVE_PORT', '8000') + '/ready', timeout=4)"]
# tini is PID 1: it forwards SIGTERM to the server (which drains, see --shutdown-timeout) and
# reaps the media decoding worker processes.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "llava-serve", "serve"]
CMD []
