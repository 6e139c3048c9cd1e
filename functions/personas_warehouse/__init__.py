"""personas-warehouse: Segment Personas calls from Pub/Sub into BigQuery, Segment's warehouse layout."""
