"""The one config file (YAML or JSON): space routing, the space policy, the Personas event names, and
selective sync. Its marshmallow schema, the definition, is schemas/config_schema.py; this module holds
only the names the functions use at run time, so reading a compiled config (settings.py) imports no
marshmallow.

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
