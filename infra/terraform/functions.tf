# Two gen2 functions from one source (build/function, zipped and uploaded by Cloud Build).
#
# Network: ingress ALLOW_INTERNAL_ONLY on both. Cloud Run counts as internal the requests that
# Pub/Sub (push), Cloud Scheduler, Cloud Tasks, Eventarc, Workflows and BigQuery send from the same
# project (or VPC Service Controls perimeter) to the service's default run.app URL
# (https://cloud.google.com/run/docs/securing/ingress, "Internal"). The push subscription and the
# scheduler job live in this project and call service_config[0].uri, the run.app URL, so they still
# reach the functions while the internet does not. Authentication is required on top of that: only
# the push and scheduler service accounts hold run.invoker (iam.tf).
#
# Build: a dedicated build service account (iam.tf) and a dedicated image repository, instead of
# the project's default build identity, which new projects no longer grant build rights.

resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:Holds only the build images of this repository's source code (no customer data). A CMEK would have to live in var.region, while kms_key_name lives in the BigQuery location.
  repository_id = "${var.name_prefix}-functions"
  location      = var.region
  format        = "DOCKER"
  description   = "Images of the personas-warehouse functions, written by their builds."

  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "ingest" {
  name        = "${var.name_prefix}-ingest"
  location    = var.region
  description = "Writes Segment Personas calls from Pub/Sub (push subscription) into BigQuery."

  build_config {
    runtime           = "python311"
    entry_point       = "ingest"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  # No event_trigger: google_pubsub_subscription.ingest pushes to this function (see pubsub.tf).
  # Scale settings: README, "Scale".
  service_config {
    service_account_email            = google_service_account.ingest.email
    available_memory                 = var.ingest_memory
    available_cpu                    = var.ingest_cpu
    timeout_seconds                  = var.ingest_timeout_seconds
    min_instance_count               = 0
    max_instance_count               = var.ingest_max_instances
    max_instance_request_concurrency = var.ingest_concurrency
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.ingest_env

    # FORGET_HASH_KEY from Secret Manager (var.forget_hash_key_secret): never in Terraform state or the plan.
    dynamic "secret_environment_variables" {
      for_each = var.forget_hash_key_secret == null ? [] : [var.forget_hash_key_secret]
      content {
        key        = "FORGET_HASH_KEY"
        project_id = var.project
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.ingest,
    google_secret_manager_secret_iam_member.functions_read_forget_key,
    google_bigquery_dataset_access.ops_writers,
    google_project_iam_member.build,
    google_project_iam_member.build_reads_function_sources,
    google_storage_bucket_iam_member.build_reads_source,
    google_artifact_registry_repository_iam_member.build_writes_images,
    google_service_account_iam_member.deployer_acts_as,
    google_bigquery_table.ops,
  ]
}

resource "google_cloudfunctions2_function" "sync" {
  name        = "${var.name_prefix}-sync"
  location    = var.region
  description = "Users sync (Cloud Scheduler POST, every minute by default); answers 500 when a space failed."

  build_config {
    runtime           = "python311"
    entry_point       = "sync"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  # One run at a time: a second request while a sync runs is refused and retried by the scheduler.
  service_config {
    service_account_email            = google_service_account.sync.email
    available_memory                 = var.sync_memory
    available_cpu                    = "1"
    timeout_seconds                  = var.sync_timeout_seconds
    min_instance_count               = 0
    max_instance_count               = 1
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.function_env

    # FORGET_HASH_KEY from Secret Manager (var.forget_hash_key_secret): never in Terraform state or the plan.
    dynamic "secret_environment_variables" {
      for_each = var.forget_hash_key_secret == null ? [] : [var.forget_hash_key_secret]
      content {
        key        = "FORGET_HASH_KEY"
        project_id = var.project
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.sync,
    google_secret_manager_secret_iam_member.functions_read_forget_key,
    google_bigquery_dataset_access.ops_writers,
    google_project_iam_member.build,
    google_project_iam_member.build_reads_function_sources,
    google_storage_bucket_iam_member.build_reads_source,
    google_artifact_registry_repository_iam_member.build_writes_images,
    google_service_account_iam_member.deployer_acts_as,
    google_bigquery_table.ops,
  ]
}
