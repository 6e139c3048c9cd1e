# One service account per role. Only non-authoritative *_iam_member grants: nothing here removes
# bindings that others made.

resource "google_service_account" "ingest" {
  account_id   = "${var.name_prefix}-ingest"
  display_name = "personas-warehouse ingest function"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "sync" {
  account_id   = "${var.name_prefix}-sync"
  display_name = "personas-warehouse sync function"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "push" {
  account_id   = "${var.name_prefix}-push"
  display_name = "Pub/Sub push to the ingest function (OIDC)"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "scheduler" {
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "Cloud Scheduler call of the sync function (OIDC)"

  depends_on = [google_project_service.apis]
}

# Ingest creates one dataset per space at run time (and its tables and new columns) and streams
# rows: dataEditor must be held on the project, since the datasets do not exist beforehand. It
# runs no queries, so no jobUser.
resource "google_project_iam_member" "ingest" {
  for_each = toset(["roles/bigquery.dataEditor"])

  project = var.project
  role    = each.value
  member  = "serviceAccount:${google_service_account.ingest.email}"
}

# Sync lists the space datasets, creates users tables, runs MERGE queries (jobUser) and writes
# sync_history.
resource "google_project_iam_member" "sync" {
  for_each = toset(["roles/bigquery.dataEditor", "roles/bigquery.jobUser"])

  project = var.project
  role    = each.value
  member  = "serviceAccount:${google_service_account.sync.email}"
}

# A gen2 function is served by a Cloud Run service of the same name: invoking it needs run.invoker
# on that service.
resource "google_cloud_run_service_iam_member" "push_invokes_ingest" {
  project  = var.project
  location = google_cloudfunctions2_function.ingest.location
  service  = google_cloudfunctions2_function.ingest.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push.email}"
}

resource "google_cloud_run_service_iam_member" "scheduler_invokes_sync" {
  project  = var.project
  location = google_cloudfunctions2_function.sync.location
  service  = google_cloudfunctions2_function.sync.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Dead-lettering needs the Pub/Sub service agent to publish to the dead-letter topic and to
# subscribe to (acknowledge on) the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  project      = var.project
  subscription = google_pubsub_subscription.ingest.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# Projects that enabled Pub/Sub before 2021-04-08 need this for the push OIDC token; it is
# scoped to the push service account only.
resource "google_service_account_iam_member" "pubsub_signs_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}
