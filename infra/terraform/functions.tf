# Two gen2 functions from one source (build/function, zipped and uploaded by Cloud Build).
# Both are private: only the push and scheduler service accounts may invoke them (iam.tf).
# Ingress is ALLOW_ALL because Pub/Sub push and Cloud Scheduler call from Google's network, not a
# VPC; authentication is still required on every request.

resource "google_cloudfunctions2_function" "ingest" {
  name        = "${var.name_prefix}-ingest"
  location    = var.region
  description = "Writes Segment Personas calls from Pub/Sub (push subscription) into BigQuery."

  build_config {
    runtime         = "python311"
    entry_point     = "ingest"
    service_account = var.build_service_account

    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  # No event_trigger: google_pubsub_subscription.ingest pushes to this function (see pubsub.tf).
  service_config {
    service_account_email            = google_service_account.ingest.email
    available_memory                 = var.ingest_memory
    available_cpu                    = var.ingest_cpu
    timeout_seconds                  = var.ingest_timeout_seconds
    min_instance_count               = 0
    max_instance_count               = var.ingest_max_instances
    max_instance_request_concurrency = var.ingest_concurrency
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.function_env
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.ingest,
    google_bigquery_table.ops,
  ]
}

resource "google_cloudfunctions2_function" "sync" {
  name        = "${var.name_prefix}-sync"
  location    = var.region
  description = "Hourly users sync (Cloud Scheduler POST); answers 500 when a space failed."

  build_config {
    runtime         = "python311"
    entry_point     = "sync"
    service_account = var.build_service_account

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
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.function_env
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.sync,
    google_bigquery_table.ops,
  ]
}
