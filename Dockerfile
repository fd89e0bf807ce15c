# The production image: Airflow 3.3.2 (Python 3.11, as the locks) with the runtime set and the
# project. Built by `docker compose build`; the same image runs every Airflow service.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
# The runtime lock (requirements.lock): exactly the versions the tests ran with. Naming
# apache-airflow keeps pip from moving Airflow itself.
COPY --chown=airflow:0 requirements.lock /opt/retention/requirements.lock
RUN pip install --no-cache-dir --only-binary :all: \
        "apache-airflow==${AIRFLOW_VERSION}" -r /opt/retention/requirements.lock

# The project: the DAG file, plugins and the library. PYTHONPATH makes `include` importable.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 include/ /opt/airflow/include/
ENV PYTHONPATH=/opt/airflow \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

# The demo profile's SaaS API keeps its records here (a named volume takes this owner).
RUN mkdir -p /opt/airflow/saas

# Fail the build, not the first run, if the catalogue or the DAG file is broken.
RUN python -m include.retention validate
