# kms_key_name: customer-managed encryption when set, Google-managed when null.
resource "google_pubsub_topic" "calls" {
  name         = var.topic_name
  kms_key_name = var.kms_key_name

  depends_on = [google_project_service.apis, google_kms_crypto_key_iam_member.cmek]
}

# Who may publish calls: Segment's Pub/Sub destination publishes as its own service account, which needs
# Pub/Sub Publisher on the topic (segment-docs, src/connections/destinations/catalog/google-cloud-pubsub,
# "Authentication"). On this topic only, never the project; additive, so publishers granted elsewhere stay.
resource "google_pubsub_topic_iam_member" "calls_publishers" {
  for_each = toset(var.calls_topic_publishers)

  project = var.project
  topic   = google_pubsub_topic.calls.name
  role    = "roles/pubsub.publisher"
  member  = each.value
}

# Messages that failed max_delivery_attempts times land here and wait for an operator.
resource "google_pubsub_topic" "dead_letter" {
  name         = "${var.topic_name}-dead-letter"
  kms_key_name = var.kms_key_name

  depends_on = [google_project_service.apis, google_kms_crypto_key_iam_member.cmek]
}

# Without a subscription, messages published to the dead-letter topic would be dropped.
resource "google_pubsub_subscription" "dead_letter" {
  name  = "${var.topic_name}-dead-letter-hold"
  topic = google_pubsub_topic.dead_letter.id

  message_retention_duration = "604800s" # 7 days, the maximum for unacked messages
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = "" # never expires, even when nobody pulls for 31 days
  }
}

# An explicit push subscription instead of the function's event_trigger: an event_trigger makes
# Eventarc create and own the subscription, so its dead-letter policy, retry backoff and ack
# deadline are not ours to set (and would be reset on redeploy). Here we set all three. The ingest
# function receives the wrapped push body ({"message": ..., "subscription": ...}); the topic path
# appended to the URL names the topic to functions-framework's CloudEvent conversion and is ignored
# by an HTTP function (any path reaches it). Retry and dead-letter settings absorb a burst while
# the function scales out: README, "Scale".
resource "google_pubsub_subscription" "ingest" {
  name  = "${var.topic_name}-ingest"
  topic = google_pubsub_topic.calls.id

  ack_deadline_seconds       = local.ingest_ack_deadline_seconds
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "${var.push_minimum_backoff_seconds}s"
    maximum_backoff = "${var.push_maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.ingest.service_config[0].uri}/${google_pubsub_topic.calls.id}"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.ingest.service_config[0].uri
    }
  }

  depends_on = [
    google_cloud_run_service_iam_member.push_invokes_ingest,
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_pubsub_subscription.dead_letter,
    google_service_account_iam_member.pubsub_signs_push_tokens,
    google_service_account_iam_member.deployer_acts_as,
  ]
}
