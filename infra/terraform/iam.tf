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

# Builds both functions' images (Cloud Build, started by Cloud Functions), instead of the project's
# default build identity: since July 2024 new projects no longer give that one the rights to build
# a function (https://cloud.google.com/functions/1stgendocs/securing/build-custom-sa).
resource "google_service_account" "build" {
  account_id   = "${var.name_prefix}-build"
  display_name = "Cloud Build of the personas-warehouse functions"

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

# What a function build needs, scoped as tightly as each resource allows. Google documents these
# roles for a custom build service account: roles/logging.logWriter (build logs),
# roles/artifactregistry.writer (the built image), roles/storage.objectViewer (the source archive)
# (https://cloud.google.com/functions/1stgendocs/securing/build-custom-sa); for Cloud Run functions
# the single role roles/run.builder bundles the same permissions project-wide
# (logging.logEntries.create, artifactregistry.repositories.upload/downloadArtifacts,
# storage.objects.get: https://cloud.google.com/run/docs/reference/iam/roles).
resource "google_project_iam_member" "build" {
  for_each = toset(["roles/logging.logWriter"])

  project = var.project
  role    = each.value
  member  = "serviceAccount:${google_service_account.build.email}"
}

# The build downloads a copy of the source that Cloud Functions makes in its own bucket,
# gcf-v2-sources-<project number>-<region> (a missing grant fails the build with "Access to bucket
# gcf-v2-sources-... denied. You must grant Storage Object Viewer permission": hashicorp/
# terraform-provider-google#20571). Cloud Functions creates that bucket at the first deployment,
# so the grant is a project one limited by a condition to that bucket's name.
resource "google_project_iam_member" "build_reads_function_sources" {
  project = var.project
  role    = "roles/storage.objectViewer"
  member  = "serviceAccount:${google_service_account.build.email}"

  condition {
    title       = "gcf-v2-sources bucket only"
    description = "Cloud Functions' copy of the function source."
    expression  = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-${local.project_number}-${var.region}\")"
  }
}

# The uploaded archive itself (var.source_bucket, created in the bootstrap).
resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = var.source_bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.build.email}"
}

resource "google_artifact_registry_repository_iam_member" "build_writes_images" {
  project    = var.project
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

# Whoever applies this module names these service accounts as a function's runtime or build
# identity, a push subscription's or a scheduler job's OIDC identity: each needs
# iam.serviceAccounts.actAs on it (roles/iam.serviceAccountUser, on the account only, not the
# project). Granting it needs iam.serviceAccounts.setIamPolicy, which the deployer holds through
# roles/iam.serviceAccountAdmin (README, bootstrap step 4).
locals {
  deployer_acts_as = {
    ingest    = google_service_account.ingest.name
    sync      = google_service_account.sync.name
    push      = google_service_account.push.name
    scheduler = google_service_account.scheduler.name
    build     = google_service_account.build.name
  }
}

resource "google_service_account_iam_member" "deployer_acts_as" {
  for_each = var.deployer_member == null ? {} : local.deployer_acts_as

  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = var.deployer_member
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

# The same for Cloud Scheduler's OIDC token of the sync job (projects that enabled Cloud Scheduler
# before 2019-03-19 lack it); scoped to the scheduler service account only.
resource "google_service_account_iam_member" "scheduler_signs_sync_tokens" {
  service_account_id = google_service_account.scheduler.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.scheduler_service_agent
}

# Customer-managed encryption (optional): BigQuery and Pub/Sub encrypt with the key through their
# service agents, which need encrypt/decrypt on it before a dataset or topic can use it.
resource "google_kms_crypto_key_iam_member" "cmek" {
  for_each = var.kms_key_name == null ? {} : {
    bigquery = local.bigquery_kms_agent
    pubsub   = local.pubsub_service_agent
  }

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}
