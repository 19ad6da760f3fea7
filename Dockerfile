# One image for both services; the command picks which:
#   docker run IMAGE embed_service     docker run IMAGE search_service
# Model weights are not baked in: mount a save_pretrained folder and set EMBED_MODEL,
# or let embed_service download openai/clip-vit-base-patch32 on first start.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY embed_service ./embed_service
COPY search_service ./search_service
COPY clients ./clients
COPY serving ./serving
# torch's CPU wheels (the +cpu build satisfies pyproject's torch==2.13.0), not CUDA's.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
    && useradd --create-home --uid 10001 imagesearch \
    && mkdir /data /cache && chown imagesearch /data /cache
USER imagesearch

# Inside a container the services must listen beyond loopback; set tokens and TLS
# (see README, "Deploying") before publishing a port.
ENV EMBED_ADDR=0.0.0.0:50051 \
    SEARCH_ADDR=0.0.0.0:50052 \
    DATA_DIR=/data \
    EMBED_CACHE_DIR=/cache \
    PYTHONUNBUFFERED=1
EXPOSE 50051 50052 9464
VOLUME ["/data", "/cache"]
ENTRYPOINT ["python", "-m"]
CMD ["embed_service"]
