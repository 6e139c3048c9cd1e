variable "project" {
  description = "Google Cloud project id that hosts everything (functions, Pub/Sub, BigQuery)."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Functions and the Cloud Scheduler job."
  type        = string
  default     = "us-central1"
}

variable "bigquery_location" {
  description = "BigQuery location of the ops dataset and of the space datasets the functions create (BIGQUERY_LOCATION)."
  type        = string
  default     = "US"
}

variable "name_prefix" {
  description = "Prefix of function, service account and scheduler job names."
  type        = string
  default     = "personas"

  validation {
    # Service account ids are 6-30 characters; the longest suffix used is "-scheduler" (10).
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters: lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "topic_name" {
  description = "Pub/Sub topic that receives the Segment Personas calls."
  type        = string
  default     = "personas-calls"
}

variable "ops_dataset" {
  description = "Operations dataset (rejected_messages, sync_history); passed to the functions as OPS_DATASET."
  type        = string
  default     = "personas__ops"

  validation {
    # Same rule as settings._check: a valid dataset name that no personas_<space slug> can take.
    condition     = length(var.ops_dataset) <= 1024 && can(regex("^[A-Za-z0-9_]+$", var.ops_dataset)) && !can(regex("^personas_[a-z0-9][a-z0-9_]{0,99}$", var.ops_dataset))
    error_message = "ops_dataset must be a BigQuery dataset name that is not personas_<space slug>."
  }
}

variable "source_bucket" {
  description = "Cloud Storage bucket holding the zipped function source (build/function, uploaded by Cloud Build)."
  type        = string
}

variable "source_object" {
  description = "Object name of the zipped function source in source_bucket. A new name per build redeploys both functions."
  type        = string
}

variable "deployer_member" {
  description = "IAM member that runs `terraform apply` (usually serviceAccount:personas-deployer@PROJECT.iam.gserviceaccount.com, the Cloud Build deployer). It gets iam.serviceAccountUser (actAs) on every service account this module creates; null: grant that yourself (README, bootstrap)."
  type        = string
  default     = null

  validation {
    condition     = var.deployer_member == null || can(regex("^(serviceAccount|user|group):[^@\\s]+@[^@\\s]+$", var.deployer_member))
    error_message = "deployer_member must look like serviceAccount:EMAIL, user:EMAIL or group:EMAIL."
  }
}

variable "kms_key_name" {
  description = "Customer-managed key (projects/P/locations/L/keyRings/R/cryptoKeys/K) for the ops dataset, its tables, both topics, and the space datasets the functions create (SPACE_DATASET_KMS_KEY). Its location must hold bigquery_location. null: Google-managed encryption."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name must be projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "space_dataset_readers" {
  description = "IAM members (user:, group:, serviceAccount:, domain:) given READER on every space dataset the functions create, e.g. your analysts' group (SPACE_DATASET_READERS). Project owners are OWNER of them; nobody else gets access from the project."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for member in var.space_dataset_readers : can(regex("^(serviceAccount|user|group|domain):[^\\s,:]+$", member))])
    error_message = "space_dataset_readers must be serviceAccount:, user:, group: or domain: members."
  }
}

variable "calls_topic_publishers" {
  description = "IAM members granted roles/pubsub.publisher on the calls topic only. Default: Segment's Google Cloud Pub/Sub destination, which publishes as pubsub@segment-integrations.iam.gserviceaccount.com (docs/connect-segment.md). []: nobody (publish with your own identities)."
  type        = list(string)
  default     = ["serviceAccount:pubsub@segment-integrations.iam.gserviceaccount.com"]

  validation {
    condition     = alltrue([for member in var.calls_topic_publishers : can(regex("^(serviceAccount|user|group):[^@\\s]+@[^@\\s]+$", member))])
    error_message = "calls_topic_publishers must be serviceAccount:EMAIL, user:EMAIL or group:EMAIL members."
  }
}

variable "personas_config" {
  description = "PERSONAS_CONFIG: path of the spaces config file inside the deployed source (relative to its root). Empty: the source's personas.yaml if it ships one."
  type        = string
  default     = ""
}

variable "bigquery_writer" {
  description = "How the functions write rows: insert_all (legacy streaming) or storage_write (Storage Write API, half the price per GiB, 2 TiB a month free). README, \"Choosing the writer\"."
  type        = string
  default     = "storage_write"

  validation {
    condition     = contains(["insert_all", "storage_write"], var.bigquery_writer)
    error_message = "bigquery_writer must be insert_all or storage_write."
  }
}

variable "extra_environment_variables" {
  description = "Further settings for both functions (DEFAULT_SPACE, MAX_MESSAGE_BYTES, ...). The variables this module manages win over these."
  type        = map(string)
  default     = {}
}

variable "ingest_timeout_seconds" {
  description = "Timeout of the ingest function. The push subscription's ack deadline is kept above it."
  type        = number
  default     = 60

  validation {
    # Pub/Sub push ack deadlines stop at 600 s, and the ack deadline is the timeout + 30 s.
    condition     = var.ingest_timeout_seconds >= 15 && var.ingest_timeout_seconds <= 570
    error_message = "ingest_timeout_seconds must be between 15 and 570."
  }
}

variable "ingest_deadline_margin_seconds" {
  description = "INGEST_DEADLINE_SECONDS is ingest_timeout_seconds minus this: the code stops retrying BigQuery in time to answer."
  type        = number
  default     = 10

  validation {
    condition     = var.ingest_deadline_margin_seconds >= 5 && var.ingest_timeout_seconds - var.ingest_deadline_margin_seconds >= 5
    error_message = "ingest_deadline_margin_seconds must be at least 5 and leave INGEST_DEADLINE_SECONDS at least 5."
  }
}

variable "ingest_max_instances" {
  description = "Upper bound on ingest instances (bounds the BigQuery write rate and the cost). 100 absorbs a 10,000 messages/s burst: README, \"Scale\"."
  type        = number
  default     = 100

  validation {
    condition     = var.ingest_max_instances >= 1
    error_message = "ingest_max_instances must be at least 1."
  }
}

variable "ingest_concurrency" {
  description = "Concurrent requests per ingest instance (gen2); also the THREADS of its functions-framework server. More than 1 needs at least 1 vCPU (ingest_cpu). README, \"Scale\"."
  type        = number
  default     = 80

  validation {
    condition     = var.ingest_concurrency >= 1 && var.ingest_concurrency <= 1000
    error_message = "ingest_concurrency must be between 1 and 1000."
  }
}

variable "ingest_memory" {
  description = "Memory of an ingest instance."
  type        = string
  default     = "512Mi"
}

variable "ingest_cpu" {
  description = "vCPUs of an ingest instance (at least \"1\" when ingest_concurrency > 1)."
  type        = string
  default     = "1"
}

variable "sync_timeout_seconds" {
  description = "Timeout of the sync function. The code gives a sync run 1500 s; the rest is margin to answer."
  type        = number
  default     = 1800

  validation {
    condition     = var.sync_timeout_seconds >= 1560 && var.sync_timeout_seconds <= 3600
    error_message = "sync_timeout_seconds must be between 1560 (the code's 1500 s sync deadline plus margin) and 3600."
  }
}

variable "sync_memory" {
  description = "Memory of the sync instance."
  type        = string
  default     = "512Mi"
}

variable "sync_schedule" {
  description = "Cron schedule of the users sync (Cloud Scheduler). Every minute: users is fresh within about a minute, for about $1.72 a day of queries at 1M calls a day and 1M users (docs/performance.md); \"0 * * * *\" (hourly) costs about $0.13."
  type        = string
  default     = "* * * * *"
}

variable "sync_time_zone" {
  description = "Time zone of sync_schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "push_minimum_backoff_seconds" {
  description = "Pub/Sub's first wait before redelivering a message the ingest function refused (5xx, 429, timeout)."
  type        = number
  default     = 10

  validation {
    condition     = var.push_minimum_backoff_seconds >= 0 && var.push_minimum_backoff_seconds <= var.push_maximum_backoff_seconds
    error_message = "push_minimum_backoff_seconds must be between 0 and push_maximum_backoff_seconds."
  }
}

variable "push_maximum_backoff_seconds" {
  description = "Longest wait between redeliveries of one message (Pub/Sub's limit: 600 s)."
  type        = number
  default     = 600

  validation {
    condition     = var.push_maximum_backoff_seconds > 0 && var.push_maximum_backoff_seconds <= 600
    error_message = "push_maximum_backoff_seconds must be between 1 and 600."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before Pub/Sub moves it to the dead-letter topic. With the backoffs, it must outlast a scale-out: README, \"Scale\"."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "sync_overlap_seconds" {
  description = "SYNC_OVERLAP_SECONDS: how much before its last watermark each sync run reads again. A row becomes visible up to INGEST_DEADLINE_SECONDS (ingest_timeout_seconds - ingest_deadline_margin_seconds) plus 30 s after its loaded_at, so less is refused here, as the functions' settings refuse it."
  type        = number
  default     = 120

  validation {
    condition     = var.sync_overlap_seconds >= var.ingest_timeout_seconds - var.ingest_deadline_margin_seconds + 30
    error_message = "sync_overlap_seconds must be at least ingest_timeout_seconds - ingest_deadline_margin_seconds + 30: raise it with the ingest timeout."
  }
}

variable "forget_hash_key_secret" {
  description = "Secret Manager secret (its id, in var.project) holding FORGET_HASH_KEY, the key of forgotten users' hashes (docs/forget.md). Both functions read its latest version as FORGET_HASH_KEY and may access that secret only. null: no key, and python -m infra.ops.forget refuses to start."
  type        = string
  default     = null

  validation {
    condition     = var.forget_hash_key_secret == null || can(regex("^[A-Za-z0-9_-]{1,255}$", var.forget_hash_key_secret))
    error_message = "forget_hash_key_secret must be a Secret Manager secret id (1 to 255 of A-Z, a-z, 0-9, _ and -)."
  }
}
