data "google_project" "this" {
  project_id = var.project
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com", # gen2 functions keep their images there
    "bigquery.googleapis.com",
    "cloudbuild.googleapis.com", # builds the function source
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com", # gen2 functions run as Cloud Run services
    "storage.googleapis.com",
  ])

  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

locals {
  # The Pub/Sub service agent: it dead-letters messages and signs the push requests' OIDC tokens.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # The code's own deadline stays below the function timeout, so it answers (and Pub/Sub gets a
  # 5xx to retry) before the platform kills the request.
  ingest_deadline_seconds = var.ingest_timeout_seconds - var.ingest_deadline_margin_seconds

  # Pub/Sub must not redeliver a message that is still being processed: wait longer than the
  # function may run. 600 s is Pub/Sub's maximum.
  ingest_ack_deadline_seconds = min(600, var.ingest_timeout_seconds + 30)

  # Cloud Scheduler allows at most 30 minutes per HTTP attempt.
  sync_attempt_deadline_seconds = min(1800, var.sync_timeout_seconds)

  managed_env = {
    BIGQUERY_PROJECT        = var.project
    BIGQUERY_LOCATION       = var.bigquery_location
    OPS_DATASET             = google_bigquery_dataset.ops.dataset_id
    INGEST_DEADLINE_SECONDS = tostring(local.ingest_deadline_seconds)
  }
  optional_env = { for name, value in { PERSONAS_CONFIG = var.personas_config } : name => value if value != "" }

  # One source, one configuration: both functions read the same settings at start-up.
  function_env = merge(var.extra_environment_variables, local.optional_env, local.managed_env)
}
