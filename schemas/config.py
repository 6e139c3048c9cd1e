"""marshmallow schema of the one config file (YAML or JSON): space routing and selective sync.

    spaces:
      marketing:                      # slug: dataset personas_marketing
        space_ids: [spa_9f8d2]        # context.personas.space_id values routed to this space
        disabled_tables: [audience_exited]
        disabled_columns:
          "*": [email]                # every table of the space
          identifies: [internal_score]

Names are warehouse names (after the naming rule). Base columns and the discards table can never be
disabled: without them rows could not be identified, ordered or recovered.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from schemas.tables import table_specs

NAME = re.compile(r"^[a-z_][a-z0-9_]{0,299}\Z")
SLUG = re.compile(r"^[a-z0-9][a-z0-9_]{0,99}\Z")
ALL_TABLES = "*"
NEVER_DISABLED_TABLES = frozenset({"discards"})


def _base_columns() -> frozenset[str]:
    specs = table_specs()
    return frozenset().union(*(specs[k].column_names for k in ("identifies", "tracks", "users")))


def _names() -> fields.List[str]:
    return fields.List(
        fields.String(validate=validate.Regexp(NAME, error="Not a warehouse name: {input}")), load_default=list
    )


class SpaceConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    space_ids = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    disabled_tables = _names()
    disabled_columns = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^(\*|[a-z_][a-z0-9_]*)\Z")), values=_names(), load_default=dict
    )

    @validates("disabled_tables")
    def _tables(self, value: list[str], **kwargs: Any) -> None:
        kept = sorted(NEVER_DISABLED_TABLES.intersection(value))
        if kept:
            raise ValidationError(f"These tables cannot be disabled: {kept}.")

    @validates("disabled_columns")
    def _columns(self, value: dict[str, list[str]], **kwargs: Any) -> None:
        base = _base_columns()
        for table, names in value.items():
            kept = sorted(base.intersection(names))
            if kept:
                raise ValidationError(f"{table}: base columns cannot be disabled: {kept}.")


class ConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    spaces = fields.Dict(
        keys=fields.String(validate=validate.Regexp(SLUG, error="Not a safe space slug: {input}")),
        values=fields.Nested(SpaceConfigSchema),
        load_default=dict,
        allow_none=True,
    )

    @validates_schema
    def _unique_space_ids(self, data: dict[str, Any], **kwargs: Any) -> None:
        owner: dict[str, str] = {}
        for slug, space in (data.get("spaces") or {}).items():
            for space_id in space.get("space_ids", []):
                if space_id in owner:
                    raise ValidationError(
                        f"space_id {space_id} is listed under both {owner[space_id]} and {slug}.", field_name="spaces"
                    )
                owner[space_id] = slug


CONFIG_SCHEMA = ConfigSchema()
