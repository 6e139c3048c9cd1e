resource "google_cloud_scheduler_job" "sync" {
  name        = "${var.name_prefix}-sync"
  region      = var.region
  description = "Runs the personas-warehouse users sync."
  schedule    = var.sync_schedule
  time_zone   = var.sync_time_zone

  attempt_deadline = "${local.sync_attempt_deadline_seconds}s"

  # No retry: the next scheduled run (a minute later by default) catches up anyway (incremental sync,
  # from the last successful run's watermark).
  retry_config {
    retry_count          = 0
    min_backoff_duration = "120s"
    max_backoff_duration = "600s"
    max_doublings        = 2
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.sync.service_config[0].uri
    body        = base64encode("{}")
    headers = {
      "Content-Type" = "application/json"
    }

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.sync.service_config[0].uri
    }
  }

  depends_on = [
    google_cloud_run_service_iam_member.scheduler_invokes_sync,
    google_service_account_iam_member.scheduler_signs_sync_tokens,
    google_service_account_iam_member.deployer_acts_as,
  ]
}
