"""Declarative schemas: marshmallow schemas of Personas calls and config, BigQuery table layouts."""
