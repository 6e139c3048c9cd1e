"""marshmallow schema of the one config file (YAML or JSON): space routing, the space policy, the
Personas event names, and selective sync.

    space_policy:
      allow: any                      # any: every safe slug, up to max_space_datasets; listed: only `spaces`
      max_space_datasets: 20
    spaces:
      marketing:                      # slug: dataset personas_marketing
        space_ids: [spa_9f8d2]        # context.personas.space_id values routed to this space
        personas_events:              # the track event names the space's Engage sends (these are the defaults)
          audience_entered: Audience Entered
          audience_exited: Audience Exited
          trait_computed: Trait Computed
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
ANY_SPACE, LISTED_SPACES = "any", "listed"
DEFAULT_MAX_SPACE_DATASETS = 20
# Engage's default track event names (segment-docs, src/engage/using-engage-data.md); each is configurable
# per destination connection in Engage, so per space here.
DEFAULT_PERSONAS_EVENTS = {
    "audience_entered": "Audience Entered",
    "audience_exited": "Audience Exited",
    "trait_computed": "Trait Computed",
}


def _base_columns() -> frozenset[str]:
    specs = table_specs()
    return frozenset().union(*(specs[k].column_names for k in ("identifies", "tracks", "users")))


def _names() -> fields.List[str]:
    return fields.List(
        fields.String(validate=validate.Regexp(NAME, error="Not a warehouse name: {input}")), load_default=list
    )


def _event_name(default: str) -> fields.String:
    # No leading or trailing spaces and no control characters: Engage's names are plain titles.
    plain = validate.Regexp(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,1022}[^\s\x00-\x1f\x7f])?\Z")
    message = "Not a plain event name (1-1024 characters, no leading or trailing space, no control character)."
    return fields.String(load_default=default, validate=validate.Regexp(plain.regex, error=message))


class PersonasEventsSchema(Schema):
    class Meta:
        unknown = RAISE

    audience_entered = _event_name(DEFAULT_PERSONAS_EVENTS["audience_entered"])
    audience_exited = _event_name(DEFAULT_PERSONAS_EVENTS["audience_exited"])
    trait_computed = _event_name(DEFAULT_PERSONAS_EVENTS["trait_computed"])

    @validates_schema
    def _distinct(self, data: dict[str, str], **kwargs: Any) -> None:
        if len(set(data.values())) < len(data):
            raise ValidationError(f"The three event names must differ: {data}.")


class SpacePolicySchema(Schema):
    class Meta:
        unknown = RAISE

    allow = fields.String(load_default=ANY_SPACE, validate=validate.OneOf([ANY_SPACE, LISTED_SPACES]))
    max_space_datasets = fields.Integer(
        load_default=DEFAULT_MAX_SPACE_DATASETS, strict=True, validate=validate.Range(min=1)
    )


class SpaceConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    space_ids = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    personas_events = fields.Nested(PersonasEventsSchema, load_default=lambda: dict(DEFAULT_PERSONAS_EVENTS))
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

    space_policy = fields.Nested(SpacePolicySchema, load_default=lambda: SpacePolicySchema().load({}))
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
