-- Compose only: the application's database beside Dagster's (POSTGRES_DB=dagster) on one server.
CREATE DATABASE orgsync;
