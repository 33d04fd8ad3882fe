# The loopgate App / CLI image. The Kubernetes runtime and Helm chart arrive with their own issues.
FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY action ./action
COPY templates ./templates
RUN pip install --no-cache-dir .
ENV LOOPGATE_TEMPLATES_DIR=/app/templates LOOPGATE_STATE_DIR=/var/lib/loopgate
RUN useradd --system --create-home loopgate && mkdir -p /var/lib/loopgate && chown loopgate /var/lib/loopgate
USER loopgate
ENTRYPOINT ["loopgate"]
CMD ["--help"]
