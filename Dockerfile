# pgaurora in a container.
#   With internet access:  docker build -t pgaurora/pgaurora:local .    (or --build-arg BASE=another:tag)
#   Offline:               pgaurora image build --python
# The offline build uses a base image made from this machine's Python, and installs pgaurora from wheels
# that this machine's pip fetched beforehand (the build context then holds a wheels/ directory).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
LABEL pgaurora.stage=build
COPY . /src
WORKDIR /src
RUN if [ -d wheels ]; then from="--no-index --find-links wheels pgaurora"; else from=.; fi \
 && python3 -m pip install --no-cache-dir --root-user-action=ignore --target /opt/pgaurora $from

# Only the installed packages reach the image: neither the sources nor the wheels.
FROM ${BASE}
COPY --from=build /opt/pgaurora /opt/pgaurora
ENV PYTHONPATH=/opt/pgaurora HOME=/tmp
# Not root: pgaurora needs no privilege behind its ports (all above 1024).
USER 10001
ENTRYPOINT ["python3", "-m", "pgaurora"]
CMD ["--help"]
