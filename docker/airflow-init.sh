#!/usr/bin/env bash
# The `airflow-init` service of docker-compose.yaml (runs once, as root, before every other
# Airflow service starts):
#  1. generates the stack's one secret set into the shared `airflow-secrets` volume unless it is
#     already there (a new Fernet key would make the stored connections unreadable);
#  2. migrates the metadata database;
#  3. (re)creates the connections the DAGs use: `aws_default` (the local AWS endpoint, dummy
#     keys it accepts) and `presto_default` (the Presto coordinator's TPC-H catalog).
set -euo pipefail

secrets=/opt/airflow/secrets
mkdir -p "$secrets"
umask 077
generate() {  # name, python expression printing the value
  if [[ ! -s "$secrets/$1" ]]; then
    python -c "import sys; sys.stdout.write($2)" > "$secrets/$1"
    echo "generated $1"
  fi
}
generate fernet_key '__import__("cryptography.fernet").fernet.Fernet.generate_key().decode()'
generate jwt_secret '__import__("secrets").token_urlsafe(64)'
generate api_secret_key '__import__("secrets").token_urlsafe(64)'
# The Airflow services run as the image's airflow user (uid 50000, gid 0).
chown -R 50000:0 "$secrets" /opt/airflow/logs
chmod 0500 "$secrets" && chmod 0400 "$secrets"/*

airflow db migrate

add_connection() {  # conn_id, JSON
  airflow connections delete "$1" >/dev/null 2>&1 || true
  airflow connections add "$1" --conn-json "$2"
}
# Dev-only dummy credentials: the local endpoint accepts any key.
add_connection aws_default '{"conn_type": "aws", "login": "local", "password": "local",
  "extra": {"endpoint_url": "http://local-aws:4566", "region_name": "us-east-1",
            "config_kwargs": {"retries": {"mode": "standard", "max_attempts": 10}}}}'
add_connection presto_default '{"conn_type": "presto", "host": "presto", "port": 8080,
  "login": "airflow", "schema": "tiny", "extra": {"catalog": "tpch", "protocol": "http"}}'

# One pool per use case (sagemaker.pool), counting deferred jobs: see README "A pool per use case".
PYTHONPATH=/opt/airflow/plugins python -m mlops_sagemaker.pools /opt/airflow/include/config \
  > /tmp/pools.json
airflow pools import /tmp/pools.json
