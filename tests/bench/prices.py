"""Google Cloud list prices used by docs/costs.md, each with the page it was read from and that page's date.

Why a module: the cost estimate is arithmetic on a dozen published figures; keeping them in one typed table
with their sources lets the estimate be re-checked (or re-run) when a price changes, instead of trusting
numbers pasted into prose.

The figures are list prices in USD for the US multi-region (BigQuery) and us-central1 / Tier 1 regions
(Cloud Run, Pub/Sub, Logging, Scheduler), without committed-use or negotiated discounts. They were read from
stored copies of public pages (Google's own pricing pages where the store held a readable copy, otherwise
third-party pages that quote them, named in `source`), not from the live web. `page_date` is the date the
stored page itself shows; "undated" means the stored copy carries no date, so the figure may be older than
today's price. Free tiers are separate entries (unit ends in "free per month") so the arithmetic can
apply them or not, visibly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """One published figure: amount in USD (or a size/count for minimums and free tiers) per unit."""

    amount: float
    unit: str
    source: str
    page_date: str
    note: str = ""


_BQ_PRICING = "https://cloud.google.com/bigquery/pricing"
_BQ_NOTE_VERMOREL = "https://adriennevermorel.com/notes/bigquery-on-demand-billing-mechanics/"
_BQ_CHANGES_VERMOREL = "https://adriennevermorel.com/notes/bigquery-pricing-policy-changes-2024-2025/"
_NOPS_WRITE_API = (
    "https://help.nops.io/inform/supported-recommendations/"
    "use-bigquery-storage-write-api-instead-of-streaming-inserts.md"
)
_WRITE_API_INTRO = "https://docs.cloud.google.com/bigquery/docs/write-api-intro"
_PUBSUB_PRICING = "https://cloud.google.com/pubsub/pricing"
_PUBSUB_HARVEST = (
    "https://raw.githubusercontent.com/api-evangelist/google/refs/heads/main/plans/google-plans-pricing.yml"
)
_RUN_PRICING = "https://cloud.google.com/run/pricing"
_RUN_THIRD_PARTY = "https://cloudchipr.com/blog/cloud-run-pricing"
_LOGGING_PRICING = "https://cloud.google.com/stackdriver/pricing"
_SCHEDULER_PRICING = "https://cloud.google.com/scheduler/pricing"

PRICES: dict[str, Price] = {
    # BigQuery queries (on-demand).
    "bigquery_query_per_tib": Price(
        6.25,
        "USD per TiB processed (on-demand, US multi-region)",
        f"{_BQ_CHANGES_VERMOREL}; {_BQ_NOTE_VERMOREL}",
        "undated (page says the price rose from $5 to $6.25/TiB on 2023-07-05)",
        "Google's own page in the store shows only the older $5/TB; no stored official page with $6.25 found.",
    ),
    "bigquery_query_free_tib": Price(
        1.0,
        "TiB processed free per month per billing account",
        f"{_BQ_PRICING} (stored copy, compute pricing models section)",
        "undated",
    ),
    "bigquery_min_bytes_per_table": Price(
        10 * 1024**2,
        "bytes billed at least, per table referenced and per query (10 MB)",
        f"{_BQ_PRICING} (archived copy via archive.fo); {_BQ_NOTE_VERMOREL}",
        "undated (the archived copy mentions 2015-08-12 as a past date)",
        "Rounded to the nearest MB; MB taken as MiB, as BigQuery counts GB as GiB.",
    ),
    # BigQuery writes.
    "insertall_per_gib": Price(
        0.05,
        "USD per GiB streamed with tabledata.insertAll (legacy streaming)",
        f"{_BQ_PRICING} (stored copy: '$0.01 per 200 MB'); {_NOPS_WRITE_API} ('$0.05 per GiB')",
        "undated",
        "Billed for rows successfully inserted; no free tier ('Streaming is not available through the free tier').",
    ),
    "insertall_min_row_bytes": Price(
        1024.0,
        "bytes billed at least, per row (1 KB minimum row size)",
        f"{_BQ_PRICING} (stored copy: 'individual rows calculated using a 1 KB minimum size')",
        "undated",
    ),
    "write_api_per_gib": Price(
        0.025,
        "USD per GiB ingested with the Storage Write API (gRPC)",
        _NOPS_WRITE_API,
        "undated",
        "Third-party page quoting the list price; no stored Google page with the figure found.",
    ),
    "write_api_free_tib": Price(
        2.0,
        "TiB ingested free per month per billing account (Storage Write API, gRPC)",
        f"{_WRITE_API_INTRO} ('you can ingest up to 2 TiB per month for free'); {_NOPS_WRITE_API}",
        "undated",
    ),
    # BigQuery storage.
    "bigquery_active_storage_per_gib_month": Price(
        0.02,
        "USD per GiB-month, active logical storage (US multi-region)",
        f"{_BQ_PRICING} (stored copy: '$0.02 per GB, per month', GB defined there as 2^30 bytes)",
        "undated",
        "Tables or partitions not modified for 90 days drop to long-term storage at $0.01 per GB-month.",
    ),
    "bigquery_storage_free_gib": Price(
        10.0,
        "GiB-month of storage free per month",
        f"{_BQ_PRICING} (stored copy: 'The first 10 GB is free each month')",
        "undated",
    ),
    # Pub/Sub.
    "pubsub_throughput_per_tib": Price(
        40.0,
        "USD per TiB of publish + delivery (push, pull) throughput, Message Delivery Basic",
        f"{_PUBSUB_PRICING} (stored copies); {_PUBSUB_HARVEST}",
        "2026-09-20 (date the harvest file says it read the page; the stored Google copies are undated)",
    ),
    "pubsub_free_gib": Price(
        10.0,
        "GiB of throughput free per month per billing account",
        f"{_PUBSUB_PRICING}; {_PUBSUB_HARVEST}",
        "2026-09-20",
    ),
    "pubsub_min_bytes_per_request": Price(
        1000.0,
        "bytes billed at least, per publish, push or pull request",
        f"{_PUBSUB_PRICING} ('A minimum of 1000 bytes per publish, push, or pull request')",
        "undated",
        "Per request, not per message: a push delivers one message per request, so it is per message there.",
    ),
    # Cloud Run functions (gen2 functions are billed as Cloud Run, request-based billing).
    "run_vcpu_second": Price(
        0.000024,
        "USD per vCPU-second, CPU allocated only during requests, Tier 1 region (us-central1)",
        f"{_RUN_PRICING} (stored copy); {_RUN_THIRD_PARTY}",
        "undated (the third-party guide is titled '... Pricing in 2025')",
        "Billable instance time is rounded up to the nearest 100 ms.",
    ),
    "run_gib_second": Price(
        0.0000025,
        "USD per GiB-second, memory allocated only during requests, Tier 1 region",
        f"{_RUN_THIRD_PARTY}; https://cloudwebschool.com/tools/cloud-run-cost-calculator/",
        "undated (guide titled '... Pricing in 2025')",
        "The stored Google copy was cut before this cell; figure from two third-party pages that agree.",
    ),
    "run_per_million_requests": Price(
        0.40,
        "USD per million requests beyond the free tier",
        f"{_RUN_THIRD_PARTY}; https://cloudwebschool.com/tools/cloud-run-cost-calculator/",
        "undated (guide titled '... Pricing in 2025')",
    ),
    "run_free_vcpu_seconds": Price(
        180_000.0,
        "vCPU-seconds free per month per billing account",
        f"{_RUN_PRICING} (stored copy: 'First 180,000 vCPU-seconds free per month')",
        "undated",
    ),
    "run_free_gib_seconds": Price(
        360_000.0,
        "GiB-seconds free per month per billing account",
        f"{_RUN_PRICING} (stored copy: 'First 360,000 GiB-seconds free per month')",
        "undated",
    ),
    "run_free_requests": Price(
        2_000_000.0,
        "requests free per month per billing account",
        f"{_RUN_PRICING} (stored copy: '2 million requests free per month')",
        "undated",
    ),
    # Cloud Logging.
    "logging_ingestion_per_gib": Price(
        0.50,
        "USD per GiB streamed into log bucket storage (includes 30 days' retention)",
        f"{_LOGGING_PRICING} (stored copies)",
        "undated (the table gives 2018-07-01 as this price's effective date)",
        "Counts the LogEntry's size before indexing, so metadata counts too, not only the payload.",
    ),
    "logging_free_gib": Price(
        50.0,
        "GiB free per project per month",
        f"{_LOGGING_PRICING} ('First 50 GiB/project/month')",
        "undated",
    ),
    # Cloud Scheduler.
    "scheduler_per_job_month": Price(
        0.10,
        "USD per job per 31 days ($0.003 a day), billed per day the job exists",
        f"{_SCHEDULER_PRICING} (stored copies)",
        "undated",
        "Paused jobs count; executions are not billed.",
    ),
    "scheduler_free_jobs": Price(
        3.0,
        "jobs free per month per billing account",
        f"{_SCHEDULER_PRICING} ('Each Google billing account gets 3 jobs per month free')",
        "undated",
    ),
}
