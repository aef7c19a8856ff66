# Airflow image with this package installed (regular, not editable) and the exact pinned lock.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/omni_erp/
COPY --chown=airflow:root include /opt/omni_erp/include
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/omni_erp/requirements.txt \
 && pip install --no-cache-dir --no-deps /opt/omni_erp
