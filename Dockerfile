# Airflow image with this package installed (regular, not editable), the exact pinned lock (which includes the
# Celery provider and the Redis client for the CeleryExecutor), and the DAGs and plugin baked in, so a worker
# host needs nothing but this image and its environment (docker-compose.yaml mounts ./dags over them for
# development). Not built on the CI machines (no Docker engine); tests/cluster/test_compose.py checks it.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/omni_erp/
COPY --chown=airflow:root include /opt/omni_erp/include
# apache-airflow stays pinned to the image's release so the lock can never move Airflow itself.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/omni_erp/requirements.txt \
 && pip install --no-cache-dir --no-deps /opt/omni_erp
COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
