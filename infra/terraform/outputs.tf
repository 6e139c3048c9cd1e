output "topic_id" {
  description = "Topic to publish the Personas calls to."
  value       = google_pubsub_topic.calls.id
}

output "segment_topic_path" {
  description = "Full topic path (projects/P/topics/T) to paste into Segment's Google Cloud Pub/Sub destination, for identify and the Personas track events (docs/connect-segment.md)."
  value       = "projects/${var.project}/topics/${google_pubsub_topic.calls.name}"
}

output "calls_topic_publishers" {
  description = "Members that may publish to the calls topic (calls_topic_publishers)."
  value       = sort([for grant in google_pubsub_topic_iam_member.calls_publishers : grant.member])
}

output "ingest_url" {
  description = "URL of the ingest function (internal ingress and IAM: only the push subscription calls it)."
  value       = google_cloudfunctions2_function.ingest.service_config[0].uri
}

output "sync_url" {
  description = "URL of the sync function (internal ingress: reachable from this project's scheduler, not from the internet; run a sync by hand with `gcloud scheduler jobs run`)."
  value       = google_cloudfunctions2_function.sync.service_config[0].uri
}

output "ingest_subscription" {
  description = "Push subscription that delivers the topic to the ingest function."
  value       = google_pubsub_subscription.ingest.id
}

output "dead_letter_topic" {
  description = "Topic receiving messages that failed max_delivery_attempts times."
  value       = google_pubsub_topic.dead_letter.id
}

output "dead_letter_subscription" {
  description = "Pull subscription holding dead-lettered messages for 7 days (inspect, then republish or ack)."
  value       = google_pubsub_subscription.dead_letter.id
}

output "ops_dataset" {
  description = "Operations dataset (rejected_messages, sync_history)."
  value       = google_bigquery_dataset.ops.dataset_id
}

output "service_accounts" {
  description = "Service accounts by role."
  value = {
    ingest    = google_service_account.ingest.email
    sync      = google_service_account.sync.email
    push      = google_service_account.push.email
    scheduler = google_service_account.scheduler.email
    build     = google_service_account.build.email
  }
}

output "function_image_repository" {
  description = "Artifact Registry repository holding the functions' build images."
  value       = google_artifact_registry_repository.functions.id
}
