# One image for both services (and bisect-admin / bisect-run / bisect-cli).
FROM python:3.11-slim

# git: the bisection engine keeps bare mirrors and worktrees. Same step as the README's.
# bubblewrap: BISECT_SANDBOX=bwrap, where the container runtime allows user namespaces.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates bubblewrap \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 bisect \
 && mkdir -p /var/cache/bisect-task /var/lib/bisect-task/work \
 && chown -R bisect:bisect /var/cache/bisect-task /var/lib/bisect-task

WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY producer ./producer
COPY consumer ./consumer
COPY admin ./admin
# Same command as the README's local install.
RUN pip install --no-cache-dir .

USER bisect
ENV BISECT_CACHE_DIR=/var/cache/bisect-task \
    BISECT_WORK_DIR=/var/lib/bisect-task/work \
    BISECT_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8080 9400
CMD ["bisect-producer"]
