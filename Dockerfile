# fusionserve on CPU: API, model worker and bulk worker share this image (the command
# differs). The model repository is baked in at /models; mount your own over it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FUSIONSERVE_MODEL_REPOSITORY=/models FUSIONSERVE_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY batching ./batching
COPY server ./server
COPY worker ./worker
COPY fusionserve ./fusionserve
COPY model_repository ./model_repository
RUN pip install '.[cpu]' \
    && useradd --uid 10001 --create-home fusionserve \
    && mkdir -p /data /batches && chown fusionserve /data /batches
COPY model_repository /models
USER fusionserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["fusionserve", "api", "--host", "0.0.0.0", "--port", "8000"]
