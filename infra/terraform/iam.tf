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

# BigQuery, least privilege: no data role on the project. Space datasets hold personal data, and a
# project-wide bigquery.dataEditor could read, change and delete every dataset of the project.
#
# - Creating a dataset is a project permission (datasets.insert "Requires the bigquery.datasets.create
#   permission on the project": https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets/insert).
#   Only ingest creates space datasets (a space's first call), so only ingest holds it, through a custom
#   role with that one permission; roles/bigquery.user would add jobs, reads of metadata, and more.
# - Writing into the space datasets: the functions give each dataset they create access entries
#   (SPACE_DATASET_WRITERS: both accounts WRITER, i.e. roles/bigquery.dataEditor on that dataset only;
#   project owners OWNER). Access entries set at creation replace BigQuery's defaults, the creator's
#   OWNER included (https://cloud.google.com/bigquery/docs/access-control-basic-roles), so ingest is not
#   the owner of what it creates. datasets.list shows a caller the datasets it can read, so the sync
#   visits exactly these (https://cloud.google.com/bigquery/docs/listing-datasets).
# - The operations dataset: WRITER for both (bigquery_dataset_access below).
# - Sync runs queries (MERGE): roles/bigquery.jobUser on the project, which holds no data permission.
resource "google_project_iam_custom_role" "dataset_creator" {
  project     = var.project
  role_id     = "${replace(var.name_prefix, "-", "_")}_datasetCreator"
  title       = "personas-warehouse dataset creator"
  description = "Creates BigQuery datasets (the space datasets of personas-warehouse); no access to any data."
  permissions = ["bigquery.datasets.create"]
}

resource "google_project_iam_member" "ingest" {
  project = var.project
  role    = google_project_iam_custom_role.dataset_creator.name
  member  = "serviceAccount:${google_service_account.ingest.email}"
}

resource "google_project_iam_member" "sync" {
  project = var.project
  role    = "roles/bigquery.jobUser"
  member  = "serviceAccount:${google_service_account.sync.email}"
}

# WRITER is roles/bigquery.dataEditor on this dataset only; the legacy name, as the provider asks (the API
# returns it, so roles/... would show a diff on every plan). The dataset declares no access blocks, which
# google_bigquery_dataset_access requires of it.
resource "google_bigquery_dataset_access" "ops_writers" {
  for_each = {
    ingest = google_service_account.ingest.email
    sync   = google_service_account.sync.email
  }

  project       = var.project
  dataset_id    = google_bigquery_dataset.ops.dataset_id
  role          = "WRITER"
  user_by_email = each.value
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

# The functions read FORGET_HASH_KEY from that one secret, and no other (docs/forget.md, "The key").
resource "google_secret_manager_secret_iam_member" "functions_read_forget_key" {
  for_each  = var.forget_hash_key_secret == null ? {} : { for name in ["ingest", "sync"] : name => name }
  project   = var.project
  secret_id = var.forget_hash_key_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${each.key == "ingest" ? google_service_account.ingest.email : google_service_account.sync.email}"
}
