data "google_project" "this" {
  project_id = var.project
}

# Everything else the module needs. Two APIs cannot enable themselves: Terraform enables APIs
# through Service Usage and reads the project (number, IAM) through Cloud Resource Manager, so the
# bootstrap (README, step 1) enables both with gcloud before the first apply. They are listed here
# too, so that Terraform records them and never turns them off.
resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com", # gen2 functions keep their images there
    "bigquery.googleapis.com",
    "cloudbuild.googleapis.com", # builds the function source
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com", # bootstrapped: project IAM and number
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com", # build and function logs
    "pubsub.googleapis.com",
    "run.googleapis.com",           # gen2 functions run as Cloud Run services
    "secretmanager.googleapis.com", # FORGET_HASH_KEY (var.forget_hash_key_secret)
    "serviceusage.googleapis.com",  # bootstrapped: enables the others
    "storage.googleapis.com",
  ])

  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

locals {
  project_number = data.google_project.this.number

  # Google-managed service agents. They exist once their API is enabled and its identity created
  # (README, step 1: `gcloud beta services identity create`); grants to them fail before that.
  # Pub/Sub's dead-letters messages and signs the push requests' OIDC tokens; Cloud Scheduler's
  # signs the sync job's OIDC tokens; BigQuery's encrypts with var.kms_key_name.
  pubsub_service_agent    = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  scheduler_service_agent = "serviceAccount:service-${local.project_number}@gcp-sa-cloudscheduler.iam.gserviceaccount.com"
  bigquery_kms_agent      = "serviceAccount:bq-${local.project_number}@bigquery-encryption.iam.gserviceaccount.com"

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
    SYNC_OVERLAP_SECONDS    = tostring(var.sync_overlap_seconds)
    # The access entries of each space dataset the functions create (iam.tf): both accounts may write.
    SPACE_DATASET_WRITERS = join(",", [
      "serviceAccount:${google_service_account.ingest.email}",
      "serviceAccount:${google_service_account.sync.email}",
    ])
  }
  # BIGQUERY_WRITER: how rows reach BigQuery (README, "Choosing the writer"). SPACE_DATASET_KMS_KEY: space
  # datasets hold personal data, so they get the customer-managed key too when one is set.
  optional_env = {
    for name, value in {
      PERSONAS_CONFIG       = var.personas_config
      BIGQUERY_WRITER       = var.bigquery_writer
      SPACE_DATASET_READERS = join(",", var.space_dataset_readers)
      SPACE_DATASET_KMS_KEY = var.kms_key_name == null ? "" : var.kms_key_name
    } : name => value if value != ""
  }

  # One source, one configuration: both functions read the same settings at start-up.
  function_env = merge(var.extra_environment_variables, local.optional_env, local.managed_env)

  # functions-framework serves with gunicorn threads: THREADS (default 4 per vCPU) bounds the
  # requests an instance really works on, whatever Cloud Run's concurrency. Without it, 76 of 80
  # concurrent push requests would queue inside each instance (README, "Scale").
  ingest_env = merge(local.function_env, { THREADS = tostring(var.ingest_concurrency) })
}
